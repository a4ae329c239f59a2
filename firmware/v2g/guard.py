# Guard: the local state-of-charge protection state machine (CONTRACT section 6).
#
# Runs every control tick, before the kernel, and never waits on anything: it
# only reads the latest measurements (v2g.meas), the vehicle session
# (v2g.vehicle) and the owner's settings (v2g.settings). It decides
#   - the state: fault / hold / run, with a reason (update());
#   - the power window [lo_w, hi_w] the kernel must keep the setpoint in
#     (limits());
#   - the published mode and reason (mode_and_reason(), after the kernel):
#     fault and hold as they are; run becomes charge / discharge / idle by
#     the sign of the kernel's target, and says why a request was cut.
#
# The README's state table is this file's: its rows are the branches of
# update() and mode_and_reason(), and host_tests/test_guard.py checks the
# two against each other.
#   any    -> fault  link lost (southbound)                 recovers by itself
#   any    -> fault  inverter reports a fault               latched until clear_fault()
#   any    -> fault  the vehicle session failed             recovers with the session
#   any    -> hold   paused by a technician                 until resume()
#   any    -> hold   no car (published idle vehicle_absent) until one is plugged in
#   any    -> hold   a car not in its charging loop         until it is
#   any    -> hold   SoC or power unknown/stale/implausible until fresh and plausible
#   any    -> hold   car and inverter SoC disagree          until they agree
#   hold/fault -> run  when none of the above holds
#   run: lo_w = 0 (no export) at or below reserve; hi_w = 0 at the ceiling
#        (soc_max, or departure.soc_pct while charging for departure);
#        both taper in the last few Wh so the battery stops at the limit.
#   stop(): idle "stopped" for good (a clean shutdown), window 0..0.
from v2g.settings import Settings

FAULT = const(0)
HOLD = const(1)
RUN = const(2)
STATE_NAMES = ("fault", "hold", "run")

# Power tapers to zero over the last TAPER_S seconds of full-power travel to a
# limit, so measurement and tick latency cannot carry the SoC past it.
_TAPER_S = const(10)
_TAPER_CPCT = const(1000)  # beyond 10 % from a limit there is no taper

_FAULT_LOG_LEN = const(20)
# The plan aims this far above departure.soc_pct so that rounding of the SoC
# reading can never leave the car just under the promise.
DEP_MARGIN_CPCT = const(10)


def _self_clearing(code):
    return code is not None and (code == "link_lost" or code.startswith("vehicle:"))


class Guard:
    """settings: the owner's reserve and departure SoC (v2g.settings),
    shared with the plan; read at every tick, never copied."""

    def __init__(self, cfg, clock, settings=None):
        b = cfg["battery"]
        self.clock = clock
        self.settings = Settings(cfg) if settings is None else settings
        self.soc_min_cpct = int(b["soc_min_pct"] * 100 + 0.5)
        self.soc_max_cpct = int(b["soc_max_pct"] * 100 + 0.5)
        self.capacity_wh = b["capacity_wh"]
        lim = cfg["limits"]
        self.charge_w = lim["charge_w"]
        self.discharge_w = lim["discharge_w"]
        self.stale_ticks = cfg["control"]["stale_periods"]
        # W allowed per 0.01 % of SoC left before a limit (see _TAPER_S)
        self.w_per_cpct = max(1, int(b["capacity_wh"] * 36 / (100 * _TAPER_S)))
        # Plausibility: SoC cannot move faster than 1.5x full power allows.
        self.max_soc_rate_cpct_per_s = (
            max(self.charge_w, self.discharge_w) * 1.5 * 10000 / 3600 / b["capacity_wh"]
        )
        self.max_ev_w = int(max(self.charge_w, self.discharge_w) * 1.5) + 500
        self.mismatch_cpct = int(cfg["vehicle"]["soc_mismatch_pct"] * 100 + 0.5)
        self.soc_mismatch = False
        self.paused = False
        self.stopped = False  # stop(): a clean shutdown, for good
        self.latched = None  # latched inverter fault code
        self.clear_requested = False
        self.state = HOLD
        self.reason = "starting"
        # what is published (decide_mode): the state's name or, in run, the
        # direction; and why
        self.mode = "hold"
        self.mode_reason = "starting"
        self.fault = None
        self.lo_w = 0
        self.hi_w = 0
        self.at_floor = False  # RUN: export blocked by reserve/floor
        self.at_ceiling = False  # RUN: charging blocked by the ceiling
        self.soc_cpct = None  # the SoC the guard trusts, or None
        self.hz_mhz = None
        self.ev_w = None
        self._soc_ref = None  # (soc_cpct, ms) last accepted sample
        self._soc_suspect = 0  # consecutive implausible samples
        self._res_cpct = 1
        self.fault_log = []  # (unix_s, "raised"/"cleared", code)
        self.fault_seq = 0  # bumps with every fault_log record

    # --- commands (technician, cloud)

    def pause(self):
        self.paused = True

    def resume(self):
        self.paused = False

    def clear_fault(self):
        """Ask to clear a latched inverter fault; it clears at the next tick
        if the inverter no longer reports it. Returns True if one was latched."""
        self.clear_requested = True
        return self.latched is not None

    def stop(self):
        """A clean shutdown: window 0..0 and mode idle "stopped" from now on."""
        self.stopped = True

    # --- per tick

    def _fresh(self, tick, sample_tick):
        return sample_tick >= 0 and tick - sample_tick <= self.stale_ticks

    def _check_soc(self, tick, meas, now_ms):
        soc = meas.soc_cpct
        if soc is None or not self._fresh(tick, meas.soc_tick) or not 0 <= soc <= 10000:
            return None
        ref = self._soc_ref
        if ref is not None:
            dt_s = self.clock.ticks_diff(now_ms, ref[1]) / 1000
            allowed = self.max_soc_rate_cpct_per_s * max(dt_s, 0) + 2 * meas.soc_res_cpct + 5
            if abs(soc - ref[0]) > allowed:
                # A jump physics does not allow: distrust it. A new level that
                # stays put for several samples is accepted as the new truth
                # (e.g. the inverter re-calibrated its SoC estimate).
                self._soc_suspect += 1
                if self._soc_suspect < 5:
                    return None
        self._soc_suspect = 0
        if ref is None or ref[0] != soc or self.clock.ticks_diff(now_ms, ref[1]) > 1000:
            self._soc_ref = (soc, now_ms)
        return soc

    def _record(self, what, code):
        log = self.fault_log
        log.append((self.clock.time(), what, code))
        if len(log) > _FAULT_LOG_LEN:
            log.pop(0)
        self.fault_seq += 1

    def update(self, tick, meas, link_ok, vehicle=None):
        """Evaluate the protection rules on the latest measurements: sets
        state, reason, fault and the trusted soc_cpct / ev_w / hz_mhz.
        vehicle: a ChademoSession (its SoC is already in meas.soc_cpct, the
        inverter's in meas.inv_soc_cpct). Call limits() next."""
        now_ms = self.clock.ticks_ms()
        soc = self._check_soc(tick, meas, now_ms)
        self.soc_cpct = soc
        ev = meas.ev_w if self._fresh(tick, meas.ev_tick) else None
        if ev is not None and abs(ev) > self.max_ev_w:
            ev = None
        self.ev_w = ev
        hz = meas.hz_mhz if self._fresh(tick, meas.hz_tick) else None
        if hz is not None and not 45000 <= hz <= 65000:
            hz = None
        self.hz_mhz = hz

        # Latched inverter fault: clears only on request and once gone.
        if meas.inv_fault is not None and link_ok:
            if self.latched is None:
                self.latched = meas.inv_fault
                self._record("raised", meas.inv_fault)
        elif self.latched is not None and self.clear_requested and link_ok:
            self._record("cleared", self.latched)
            self.latched = None
        self.clear_requested = False

        # A vehicle is the authority on its battery; the inverter's SoC
        # only cross-checks it. Beyond the configured gap one of them is
        # wrong, and we cannot tell which: hold.
        inv = meas.inv_soc_cpct
        self.soc_mismatch = (vehicle is not None and soc is not None and inv is not None
                             and abs(soc - inv) > self.mismatch_cpct)

        prev_fault = self.fault
        if not link_ok:
            self._set(FAULT, "link_lost", "link_lost")
        elif self.latched is not None:
            self._set(FAULT, "inverter_fault", self.latched)
        elif vehicle is not None and vehicle.fault is not None:
            # the session latches it until the car is gone or reset
            self._set(FAULT, "vehicle_fault", "vehicle:" + vehicle.fault)
        elif self.stopped:
            self._set(HOLD, "stopped", None)
        elif self.paused:
            self._set(HOLD, "paused", None)
        elif meas.plugged is False:
            # no car: nothing to protect or plan for, and nothing wrong
            self._set(HOLD, "vehicle_absent", None)
        elif vehicle is not None and vehicle.must_stop:
            self._set(HOLD, "vehicle_" + vehicle.state, None)
        elif soc is None:
            self._set(HOLD, "soc_unknown", None)
        elif self.soc_mismatch:
            self._set(HOLD, "soc_mismatch", None)
        elif ev is None:
            self._set(HOLD, "power_unknown", None)
        else:
            self._set(RUN, None, None)
        self._res_cpct = meas.soc_res_cpct
        if self.fault != prev_fault:
            # link and vehicle faults clear by themselves: both edges are
            # logged here (the latched inverter fault logs its own above)
            if _self_clearing(prev_fault):
                self._record("cleared", prev_fault)
            if _self_clearing(self.fault):
                self._record("raised", self.fault)
        return self.state

    def _set(self, state, reason, fault):
        self.at_floor = False
        self.at_ceiling = False
        self.state = state
        self.reason = reason
        self.fault = fault
        self.lo_w = 0
        self.hi_w = 0

    def limits(self, ceiling_cpct=None, vehicle=None):
        """Set [lo_w, hi_w] for this tick: 0..0 unless RUN. ceiling_cpct is
        the plan's charge ceiling (None = soc_max); it is capped at
        max(soc_max, departure soc)."""
        if self.state != RUN:
            return
        soc = self.soc_cpct
        # Limits are kept one SoC resolution step inside, so a reading that
        # rounds up cannot hide a true SoC past the limit.
        st = self.settings
        floor = max(st.reserve_cpct, self.soc_min_cpct) + max(1, self._res_cpct)
        ceiling = self.soc_max_cpct
        if ceiling_cpct is not None:
            # charging for departure may pass soc_max, up to the departure
            # SoC and the plan's small margin over it
            ceiling = max(ceiling, min(ceiling_cpct, st.dep_cpct + DEP_MARGIN_CPCT, 10000))
        self.at_floor = soc <= floor
        self.at_ceiling = soc >= ceiling
        self.lo_w = -self._taper(soc - floor, self.discharge_w)
        self.hi_w = self._taper(ceiling - soc, self.charge_w)
        if vehicle is not None:
            # what the car allows right now (its current limits x voltage)
            self.lo_w = max(self.lo_w, -vehicle.discharge_limit_w)
            self.hi_w = min(self.hi_w, vehicle.charge_limit_w)

    def decide_mode(self, req_w, why, target_w, droop_w):
        """Set the published `mode` and `mode_reason` for this tick, after
        the kernel; -> True if either changed. req_w/why: the request and
        its reason (owner, dispatch or plan); target_w: the kernel's target
        (request + droop, in the window); droop_w: the frequency response
        part of it. Each branch is a row of the README's state table."""
        st = self.state
        if self.stopped:
            mode, reason = "idle", "stopped"
        elif st == FAULT:
            mode, reason = "fault", self.reason
        elif self.reason == "vehicle_absent":
            mode, reason = "idle", "vehicle_absent"
        elif st == HOLD:
            mode, reason = "hold", self.reason
        else:
            mode = "charge" if target_w > 0 else "discharge" if target_w < 0 else "idle"
            if req_w < 0 and self.at_floor:
                reason = "reserve_reached"
            elif req_w > 0 and self.at_ceiling:
                reason = "soc_limit_reached"
            elif droop_w and (req_w == 0 or (target_w > 0) != (req_w > 0)):
                reason = "freq_response"
            else:
                reason = why
        if mode == self.mode and reason == self.mode_reason:
            return False
        self.mode = mode
        self.mode_reason = reason
        return True

    def _taper(self, room_cpct, full_w):
        if room_cpct <= 0:
            return 0
        if room_cpct >= _TAPER_CPCT:
            return full_w
        return min(full_w, room_cpct * self.w_per_cpct)
