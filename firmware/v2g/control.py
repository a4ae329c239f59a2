# The control loop: one fixed-period tick = measure, plan, guard, kernel, act.
#
# Who owns what. This thread owns the inverter (v2g.southbound), the vehicle
# session (v2g.vehicle), the measurements, the guard, the plan and the
# settings; nothing else touches them. The other threads (the cloud link,
# the technician's REPL) get only `shared` (v2g.shared): they read the status
# record published at the end of every tick, post actions into its inbox
# (applied at the next tick, in order) and take telemetry and events. Before
# the thread starts (App start-up), and after run() returned, the main thread
# is the only one running and may call into the Controller.
#
# Southbound I/O lives in this loop on purpose: the inverter is the actuator,
# and each Modbus transaction is bounded (timeout x retries), so a dead link
# costs one bounded stall and then fault mode. Nothing here touches the
# network.
import io
import sys
import time

from micropython import const

from v2g import kernel as K
from v2g import log
from v2g.clock import FW_EPOCH_UNIX, Clock, Follower
from v2g.guard import FAULT, RUN, STATE_NAMES, Guard
from v2g.meas import Meas
from v2g.plan import Plan
from v2g.settings import USER_MODES, Settings
from v2g.shared import Shared, state_of
from v2g.southbound import MAX_TXNS_PER_TICK, Southbound, worst_txn_ms

_SOC_REPLAN_CPCT = const(100)  # replan early when SoC drifted 1 % from the plan's basis
_MAX_DISPATCH_S = const(4 * 3600)
# A clean stop gives the car this long (real time) to see the current go to
# 0 and end its session before the loop returns anyway.
SHUTDOWN_VEHICLE_MS = const(3000)
_SHUTDOWN_TXNS = const(5)  # a stopping tick: refresh (701, 713, 714) and 0 W + heartbeat


def _user_mode(v):
    if v not in USER_MODES:
        raise ValueError(v)
    return v


def _pct(cpct):
    return None if cpct is None else cpct / 100


def where(e):
    """The innermost frames of a traceback, for the event log."""
    buf = io.StringIO()
    sys.print_exception(e, buf)
    lines = [ln.strip() for ln in buf.getvalue().split("\n") if ln.strip().startswith("File")]
    return " <- ".join(reversed(lines[-3:]))


def stop_wait_ms(cfg):
    """How long the main thread waits for run() to return after
    shared.request_stop(): the tick in flight (at worst a rediscovery, every
    transaction at its worst), the car's stop window, and the stopping ticks
    in it plus the last, each with its worst transactions. From the config,
    so a slow RS-485 line with long timeouts gets the time it needs."""
    txn = worst_txn_ms(cfg)
    period = cfg["control"]["period_ms"]
    return MAX_TXNS_PER_TICK * txn + SHUTDOWN_VEHICLE_MS + 2 * (_SHUTDOWN_TXNS * txn + period)


class Controller:
    def __init__(self, cfg, clock, inverter, vehicle=None, shared=None):
        # --- config: read-only after start-up
        self.cfg = cfg
        self.clock = clock
        self.period_ms = cfg["control"]["period_ms"]
        self.telemetry_s = cfg["mqtt"]["telemetry_s"]
        self.freq_enabled = cfg["grid"]["freq_response"]
        self.charge_w = cfg["limits"]["charge_w"]

        # --- owned by the control thread (nobody else reads these)
        self.south = Southbound(cfg, clock, inverter, self.period_ms)
        self.inv = inverter
        # a vehicle session (v2g.vehicle.VehicleSession), or None. CAN timing
        # is physical: it runs on the real clock even when control runs
        # simulated time.
        self.vehicle = vehicle
        self.real_clock = Clock()
        self.meas = Meas()
        self.settings = Settings(cfg)
        self.guard = Guard(cfg, clock, self.settings)
        self.plan = Plan(cfg, clock, self.settings)
        self.k = self._kernel_state(cfg)
        # Time (v2g.clock.Follower): lapses and periods run on its mono_s,
        # so a wall clock stepping back cannot stretch a dispatch or stop
        # telemetry; tariff and departure use now_fw_s (None: not set).
        self.time = Follower(clock)
        self.now_fw_s = None
        self.tick_no = 0
        self.link_ok = False
        self.mode_seq = 0  # bumps on every mode change (the cloud republishes state)
        self.req_w = 0
        self.dispatch = None  # (ev_w, until unix s, lapses at mono_s, until fw_s)
        self.plan_soc_cpct = None
        self.next_telemetry_s = 0  # mono_s
        self.vehicle_req_w = 0  # what the car hears at the next tick (the last request, if RUN)
        self.vehicle_stop = None  # why the charger ended the car's session, or None
        self.dep_due_s = None  # fw_s of the next departure (the session ends then)
        self.departed = False  # the departure passed with a car plugged in
        self.plugged = None  # meas.plugged at the last tick
        self._out_day = None  # local day of _out_wh0
        self._out_wh0 = None  # meas.wh_out at its first plan (the daily export cap)
        self.stopping_ms = None  # real ms by which a clean stop ends the car's session
        self.error_tick = -1  # the last tick that raised
        self.actions_applied = 0
        self.overruns = 0
        self.internal_errors = 0
        self.running = False
        self.wdt = None  # a hardware watchdog (v2g.board.watchdog), fed by every tick
        self._fault_seq = 0
        self._discoveries = -1
        self._models = ()
        self._fault_log = ()
        self._fault_log_seq = 0

        # --- shared with the other threads: the only thing they touch
        # (made by the caller at boot before the config, while the heap is
        # whole: its 38-field record is one 750-byte block on a 64-bit port)
        self.shared = Shared() if shared is None else shared
        self._follow_time(clock.ticks_ms())  # a saved dispatch is checked against it
        self._publish()

    @staticmethod
    def _kernel_state(cfg):
        k = K.new_state()
        lim = cfg["limits"]
        period_ms = cfg["control"]["period_ms"]
        k[K.RAMP_W] = max(1, lim["ramp_w_per_s"] * period_ms // 1000)
        g = cfg["grid"]
        k[K.NOM_MHZ] = g["nominal_hz"] * 1000
        k[K.DB_MHZ] = g["deadband_mhz"]
        p_ref = max(lim["charge_w"], lim["discharge_w"])
        k[K.K_W_PER_HZ] = K.droop_gain_w_per_hz(p_ref, g["nominal_hz"], g["droop_pct"])
        return k

    # --- actions (from the inbox; settings.json at start-up)

    def apply_settings(self, s):
        """Overrides persisted by earlier commands (settings.json), applied
        by the main thread before the control thread starts. A value that
        does not fit (a damaged file) is skipped with an event: the site
        config's value stays, and the firmware starts regardless."""
        for key, action in (("reserve_pct", lambda v: ("set_reserve", float(v))),
                            ("departure", lambda v: ("set_departure", int(v[0]), float(v[1]))),
                            ("mode", lambda v: ("set_mode", _user_mode(v))),
                            ("dispatch", lambda v: ("dispatch", int(v[0]), int(v[1])))):
            if key in s:
                try:
                    self._apply(action(s[key]))
                except (TypeError, ValueError, IndexError):
                    self._event("settings_ignored", {"key": key})
        self._publish()

    def _apply(self, action):
        # An action may end with a reply box (a list) from a technician
        # helper waiting in another thread: (True, result) or (False, error).
        box = None
        if len(action) > 1 and isinstance(action[-1], list):
            box = action[-1]
            action = action[:-1]
        try:
            result = self._do(action)
        except Exception as e:  # noqa: BLE001 - the asker gets the error
            if box is None:
                raise
            box.append((False, e))
            return
        if box is not None:
            box.append((True, result))

    def _do(self, action):
        op = action[0]
        if op == "dispatch":
            return self._set_dispatch(action[1], action[2])
        elif op == "set_reserve":
            self.settings.set_reserve(action[1])
        elif op == "set_departure":
            self.settings.set_departure(action[1], action[2])
            self.dep_due_s = None  # the next departure is the new time's
        elif op == "set_mode":
            self.settings.set_mode(_user_mode(action[1]))
        elif op == "clear_fault":
            return self.guard.clear_fault()
        elif op == "pause":
            self.guard.pause()
        elif op == "resume":
            self.guard.resume()
        elif op == "read_point":
            # the REPL's read("701.W"): the bus belongs to this thread
            # (its code comes with the action, imported by the REPL's
            # thread: this thread never imports, since an import writes
            # sys.modules, which the other core may be reading)
            if not self.inv.ready:
                raise OSError("inverter link down")
            return action[1](self.inv, action[2])
        elif op == "stop":
            self._begin_stop()
        else:
            raise ValueError("unknown action " + str(op))

    def _set_dispatch(self, ev_w, until_unix):
        """A dispatch runs only on a trusted clock and at most 4 h from now
        (a saved one at boot is checked like a new command). It lapses at
        `until` or after its length in monotonic time, whichever is first."""
        now = self.now_fw_s
        why = None
        if now is None:
            why = "clock_not_set"
        else:
            left_s = until_unix - FW_EPOCH_UNIX - now
            if not 0 < left_s <= _MAX_DISPATCH_S:
                why = "until not in the next 4 h"
        if why:
            self._event("dispatch_dropped", {"until": until_unix, "why": why})
            return why
        self.dispatch = (ev_w, until_unix, self.time.mono_s + left_s, now + left_s)
        return None

    def _begin_stop(self):
        """A clean stop (shared.request_stop): from this tick the guard holds
        0 W and the car's session is ended; run() returns once the car has
        stopped or SHUTDOWN_VEHICLE_MS passed."""
        if self.stopping_ms is None:
            self.stopping_ms = self.real_clock.ticks_add(self.real_clock.ticks_ms(), SHUTDOWN_VEHICLE_MS)
            self.guard.stop()

    def _follow_time(self, now_ms):
        """Follow the time; on a step of the wall clock (SNTP, a technician,
        an RTC reset) tell the cloud and replan on the new time."""
        self.now_fw_s, what, by_s = self.time.step(now_ms)
        if what is not None:
            self._event(what, {"by_s": by_s})
            self.plan.invalidate()
            self.dep_due_s = None

    # --- vehicle

    def _vehicle_soc(self, v):
        """The car's SoC is the one the guard protects (CONTRACT section 7);
        the inverter's 713 SoC stays in inv_soc_cpct as a cross-check."""
        m = self.meas
        m.plugged = v.plugged
        m.soc_cpct = v.soc_cpct
        m.soc_res_cpct = v.soc_res_cpct
        age = v.soc_age_ms
        fresh = v.soc_cpct is not None and age is not None and age <= self.guard.stale_ticks * self.period_ms
        m.soc_tick = self.tick_no if fresh else -1

    def _departure_passed(self, now_s, v):
        # The departure time passed while a car was plugged in: its session
        # ends (the connector unlocks) until that car has gone.
        if now_s is not None:
            if self.dep_due_s is None:
                self.dep_due_s = self._next_dep(now_s)
            elif now_s >= self.dep_due_s:
                # a real departure, not _next_dep's look a day later
                passed = self.plan.next_departure(self.dep_due_s) == self.dep_due_s
                self.dep_due_s = self._next_dep(now_s)
                self.departed = v.plugged and passed
        if self.departed and not v.plugged:
            self.departed = False
        return self.departed

    def _next_dep(self, now_s):
        # the next departure after this minute; with none in the schedule's
        # week, look again in a day (a new departure setting or a clock
        # step clears dep_due_s at once)
        d = self.plan.next_departure(now_s + 60)
        return now_s + 86400 if d is None else d

    def _vehicle_stop_reason(self, now_s, v):
        """Why the charger should end the car's session now, or None. The
        guard's state is last tick's: its reasons are what ended it."""
        if self.stopping_ms is not None:
            return "shutdown"
        g = self.guard
        if (g.state == FAULT and g.reason != "vehicle_fault") or self.tick_no - self.error_tick <= 1:
            return "controller_fault"
        departed = self._departure_passed(now_s, v)
        if self.settings.mode == "idle":
            return "owner"
        if departed:
            return "departure"
        return None

    def _vehicle_tick(self, now_s, v):
        why = self._vehicle_stop_reason(now_s, v)
        if why != self.vehicle_stop:
            if why is None:
                v.start()
            else:
                v.stop(why)
            self._event("vehicle_stop" if why else "vehicle_start", {"why": why or self.vehicle_stop})
            self.vehicle_stop = why
        real_ms = self.real_clock.ticks_ms()
        m = self.meas
        if self.link_ok and m.ev_w is not None:
            v.set_measured(real_ms, m.ev_w, m.dc_v, m.dc_a)
        v.tick(real_ms, self.vehicle_req_w)
        self._vehicle_soc(v)

    # --- plan

    def _request(self, now_s):
        """What to ask the kernel for, in priority order: the owner's
        idle/charge_now, a cloud dispatch, the plan. now_s: now_fw_s."""
        mode = self.settings.mode
        if mode == "idle":
            return 0, "mode_idle", None
        if mode == "charge_now":
            return self.charge_w, "charge_now", self.plan.target_pct()
        d = self.dispatch
        if d is not None:
            if now_s is not None and now_s < d[3] and self.time.mono_s < d[2]:
                return d[0], "dispatch", None
            self.dispatch = None
            self._event("dispatch_lapsed", {"until": d[1]})
        return self._plan_request(now_s)

    def _plan_request(self, now_s):
        soc = self.guard.soc_cpct
        if soc is None:
            return 0, "soc_unknown", None
        if now_s is None:
            # No wall time: no tariff, no departure time. What is safe
            # without them: charge toward the departure target, never export.
            return self.charge_w, "clock_not_set", self.plan.target_pct()
        drift = self.plan_soc_cpct is None or abs(soc - self.plan_soc_cpct) >= _SOC_REPLAN_CPCT
        if drift or self.plan.due(now_s):
            self.plan.recompute(soc / 100, now_s, self._exported_today_wh(now_s))
            self.plan_soc_cpct = soc
        return self.plan.request(now_s)

    def _exported_today_wh(self, now_s):
        """AC Wh exported since local midnight (701 TotWhInj), for the
        plan's daily cap; counted from the first plan of the day (at most a
        replan_s after midnight), 0 while the counter is unread."""
        wh = self.meas.wh_out
        day = (now_s + self.plan.utc_offset_min * 60) // 86400
        if day != self._out_day or self._out_wh0 is None:
            self._out_day = day
            self._out_wh0 = wh
        return 0 if wh is None or self._out_wh0 is None else max(0, wh - self._out_wh0)

    # --- one tick

    def tick(self):
        self.tick_no += 1
        now_ms = self.clock.ticks_ms()
        self._follow_time(now_ms)
        now_s = self.now_fw_s
        for action in self.shared.inbox.take():
            self._apply(action)
            self.actions_applied += 1
        m = self.meas
        self.link_ok = self.south.read(m, self.tick_no, probe=self.stopping_ms is None)
        v = self.vehicle
        if v is not None:
            self._vehicle_tick(now_s, v)
        if m.plugged != self.plugged:
            # a car that just arrived is planned for at once, from the SoC
            # it arrives with (CONTRACT section 8)
            self.plugged = m.plugged
            self.plan_soc_cpct = None
        g = self.guard
        # the guard judges the measurements first, so the plan only ever
        # sees a SoC the guard trusts
        was_mismatch = g.soc_mismatch
        g.update(self.tick_no, m, self.link_ok, v)
        if g.soc_mismatch != was_mismatch:
            self._event("soc_mismatch" if g.soc_mismatch else "soc_mismatch_cleared",
                        {"vehicle_soc_pct": _pct(g.soc_cpct), "inverter_soc_pct": _pct(m.inv_soc_cpct)})
        req_w, why, ceiling_pct = self._request(now_s)
        self.req_w = req_w
        g.limits(None if ceiling_pct is None else int(ceiling_pct * 100 + 0.5), v)
        # the car hears this at the next tick (direction, offered current);
        # its limits already bound the window above
        self.vehicle_req_w = req_w if g.state == RUN else 0
        k = self.k
        k[K.REQ_W] = req_w
        k[K.LO_W] = g.lo_w
        k[K.HI_W] = g.hi_w
        k[K.HZ_MHZ] = g.hz_mhz or 0
        k[K.FREQ_EN] = 1 if self.freq_enabled and not self.inv.inverter_droop else 0
        k[K.STOP] = 1 if g.state == FAULT else 0
        sp = K.tick(k)
        changed = g.decide_mode(req_w, why, k[K.TARGET_W], k[K.DROOP_W])
        if changed:
            self.mode_seq += 1
        if self.link_ok and not self.south.write(sp, now_ms):
            self.link_ok = False
        mono = self.time.mono_s
        if mono >= self.next_telemetry_s:
            self.next_telemetry_s = mono - mono % self.telemetry_s + self.telemetry_s
            self.shared.telemetry.put(now_s, g.soc_cpct, g.ev_w, g.hz_mhz, m.wh_in, m.wh_out)
        self._publish()
        self._tell_changes(changed)
        return sp

    def _event(self, kind, fields):
        self.shared.events.put(log.record(kind, fields, self.clock.time()))

    def _tell_changes(self, mode_changed):
        # after _publish: the mode event carries the record just published
        if mode_changed:
            self._event("mode", state_of(self.shared.status.d))
        g = self.guard
        if g.fault_seq != self._fault_seq:
            self._fault_seq = g.fault_seq
            t, what, code = g.fault_log[-1]
            self._event("fault_" + what, {"fault": code})

    def _publish(self):
        """The status record: one copy of this tick's values for the other
        threads. Only references to ints, strings and tuples are stored (a
        tuple is made only when its content changed), so no allocation."""
        # one name at a time: unpacking more than three builds a tuple
        g = self.guard
        m = self.meas
        st = self.settings
        s = self.south
        v = self.vehicle
        if s.discoveries != self._discoveries:
            self._discoveries = s.discoveries
            self._models = tuple(sorted(self.inv.models))
        if g.fault_seq != self._fault_log_seq:
            self._fault_log_seq = g.fault_seq
            self._fault_log = tuple(g.fault_log)
        rec = self.shared.status
        with rec.lock:
            d = rec.d
            d["tick_no"] = self.tick_no
            d["fw_s"] = self.now_fw_s
            d["mode"] = g.mode
            d["reason"] = g.mode_reason
            d["mode_seq"] = self.mode_seq
            d["guard_state"] = STATE_NAMES[g.state]
            d["fault"] = g.fault
            d["latched"] = g.latched
            d["soc_cpct"] = g.soc_cpct
            d["ev_w"] = g.ev_w
            d["setpoint_w"] = self.k[K.SP_W]
            d["req_w"] = self.req_w
            d["lo_w"] = g.lo_w
            d["hi_w"] = g.hi_w
            d["hz_mhz"] = g.hz_mhz
            d["wh_in"] = m.wh_in
            d["wh_out"] = m.wh_out
            d["reserve_cpct"] = st.reserve_cpct
            d["dep_min"] = st.dep_min
            d["dep_cpct"] = st.dep_cpct
            d["user_mode"] = st.mode
            d["dispatch"] = self.dispatch
            d["link_ok"] = self.link_ok
            d["inv_ready"] = self.inv.ready
            d["inv_models"] = self._models
            d["link_errors"] = s.link_errors
            d["last_link_error"] = s.last_link_error
            d["overruns"] = self.overruns
            d["internal_errors"] = self.internal_errors
            d["actions_applied"] = self.actions_applied
            d["fault_log"] = self._fault_log
            d["stopped"] = not self.running and self.stopping_ms is not None
            d["plugged"] = m.plugged
            if v is not None:
                d["vehicle"] = v.state
                d["v_soc_cpct"] = v.soc_cpct
                d["v_charge_limit_w"] = v.charge_limit_w
                d["v_discharge_limit_w"] = v.discharge_limit_w
                d["v_fault"] = v.fault

    def _zero(self):
        """Kernel stopped (setpoint 0 in what state reports) and 0 W written."""
        self.k[K.STOP] = 1
        K.tick(self.k)
        self.south.zero()

    def _internal_error(self, e):
        # A bug must not leave power flowing: stop the kernel, command 0 W,
        # report, and go on ticking (the next tick may well succeed). The
        # car's session is ended at the next tick (controller_fault).
        self.internal_errors += 1
        self.error_tick = self.tick_no
        self.k[K.STOP] = 1
        K.tick(self.k)
        # The handling itself may fail the same way (a MemoryError with the
        # heap still full): it must not end the control thread. The 0 W write
        # is best effort here, as in zero(): the inverter's reversion timer
        # takes it to 0 W if it cannot get through.
        try:
            self.south.zero()
        except Exception:  # noqa: BLE001
            pass
        try:
            self._event("internal_error", {"error": type(e).__name__ + ": " + str(e), "where": where(e)})
        except Exception:  # noqa: BLE001 - counted in internal_errors all the same
            pass

    def _stop_done(self):
        v = self.vehicle
        if v is None or v.ended():
            return True
        return self.real_clock.ticks_diff(self.real_clock.ticks_ms(), self.stopping_ms) >= 0

    # --- loop

    def run(self, stop_after_ticks=None):
        """The fixed-period loop; returns after stop_after_ticks, or after a
        clean stop (shared.request_stop(): 0 W, the car's session ended).
        Scheduled in real microseconds (a warped clock runs `warp` times
        faster, so the real period is period / warp); a tick's start delay
        is recorded."""
        period_us = int(self.period_ms * 1000 / self.clock.warp)
        next_us = time.ticks_us()
        n = 0
        rec = self.shared.status
        self.running = True
        while stop_after_ticks is None or n < stop_after_ticks:
            start_us = time.ticks_us()
            rec.note_delay(time.ticks_diff(start_us, next_us), start_us)
            try:
                self.tick()
                if self.wdt is not None:
                    # fed only here: if the control loop hangs, the board
                    # resets, and the inverter's own timer has gone to 0 W
                    self.wdt.feed()
            except KeyboardInterrupt:
                self.shared.interrupted = True
            except Exception as e:  # noqa: BLE001 - the loop must outlive a bug
                self._internal_error(e)
            n += 1
            if self.stopping_ms is not None and self._stop_done():
                break
            next_us = time.ticks_add(next_us, period_us)
            wait_us = time.ticks_diff(next_us, time.ticks_us())
            if wait_us < 0:
                # Overrun: start the next tick now, never a burst of catch-up
                # ticks (they would act on the same stale measurements).
                self.overruns += 1
                next_us = time.ticks_us()
            else:
                # a sleep can end early (on the unix port the other thread's
                # garbage collection signals this one): sleep to the deadline
                while wait_us > 0:
                    try:
                        time.sleep_us(wait_us)
                    except KeyboardInterrupt:
                        self.shared.interrupted = True
                    wait_us = time.ticks_diff(next_us, time.ticks_us())
        if self.stopping_ms is not None:
            # a clean stop: 0 W from the bus's owner. A further Ctrl-C
            # landing here must not skip it.
            for _ in range(5):
                try:
                    self._zero()
                    break
                except KeyboardInterrupt:
                    self.shared.interrupted = True
            # the last state the cloud gets says so
            self.running = False
            if self.guard.decide_mode(0, None, 0, 0):
                self.mode_seq += 1
            self._publish()
        self.running = False
