# The control loop: one fixed-period tick = measure, plan, guard, kernel, act.
#
# Southbound I/O lives in this loop on purpose: the inverter is the actuator,
# and each Modbus transaction is bounded (timeout x retries), so a dead link
# costs one bounded stall and then fault mode. Nothing here touches the
# network: the cloud link and the technician's REPL (other threads) read
# `snapshot()` and post actions into `inbox`, applied at the next tick.
import _thread

import array
import time

from micropython import const

from v2g import kernel as K
from v2g import log
from v2g.clock import FW_EPOCH_UNIX, Clock, Follower
from v2g.guard import FAULT, HOLD, RUN, Guard
from v2g.meas import Meas
from v2g.modbus import ModbusError
from v2g.plan import Plan

_SOC_REPLAN_CPCT = const(100)  # replan early when SoC drifted 1 % from the plan's basis
_JITTER_RING = const(256)  # last tick start delays kept for p50/p99/max (51 s at 200 ms)
_MAX_DISPATCH_S = const(4 * 3600)


def _user_mode(v):
    if v not in ("auto", "idle", "charge_now"):
        raise ValueError(v)
    return v


def _pct(cpct):
    return None if cpct is None else cpct / 100


def where(e):
    """The innermost frames of a traceback, for the event log."""
    import io
    import sys

    buf = io.StringIO()
    sys.print_exception(e, buf)
    lines = [ln.strip() for ln in buf.getvalue().split("\n") if ln.strip().startswith("File")]
    return " <- ".join(reversed(lines[-3:]))


class Mailbox:
    """A bounded list shared between the control thread and the others.
    put() (events): when full the oldest item goes and `dropped` counts it.
    offer() (actions for the control loop): never drops; an item goes only
    into free room, or into a slot that reserve() held for it."""

    def __init__(self, size):
        self.size = size
        self.items = []
        self.dropped = 0
        self.held = 0  # slots reserved, not yet filled
        self.offered = 0  # items offer() queued: the number of the last one
        self.lock = _thread.allocate_lock()

    def put(self, item):
        with self.lock:
            self.items.append(item)
            if len(self.items) > self.size:
                self.items.pop(0)
                self.dropped += 1

    def reserve(self):
        """Hold a slot for a later offer(item, True); False when full."""
        with self.lock:
            if len(self.items) + self.held >= self.size:
                return False
            self.held += 1
            return True

    def release(self):
        """Give back a slot reserve() held and nothing will fill."""
        with self.lock:
            self.held -= 1

    def offer(self, item, reserved=False):
        """Queue item: -> its number (1, 2, ...), or 0 when there is no
        room (nothing queued). reserved: into the slot reserve() held."""
        with self.lock:
            if reserved:
                self.held -= 1
            elif len(self.items) + self.held >= self.size:
                return 0
            self.items.append(item)
            self.offered += 1
            return self.offered

    def take(self):
        with self.lock:
            items = self.items
            self.items = []
        return items


_TM_FIELDS = const(6)  # ts, soc_cpct, ev_w, hz_mhz, wh_in, wh_out
_TM_NONE = const(-0x3FFFFFFF)  # "not read": a small int on every port


def int_array(n):
    """n 32-bit slots (contents unset) in one allocation: from a range the
    length is known up front, where bytes(4 * n) would be a second buffer
    as large, at boot, when the heap is tightest."""
    return array.array("i", range(n))


_TM_RING = const(64)  # telemetry samples between the threads
_early = []  # the loop's int rings, made by early_buffers() at boot


def early_buffers():
    """Make the control loop's rings (2.5 KB in two blocks) first thing at
    boot, while the heap is whole: after the config validator's garbage
    the heap may hold enough bytes but no 1.5 KB block."""
    if not _early:
        _early.append(int_array(_TM_FIELDS * _TM_RING))
        _early.append(int_array(_JITTER_RING))


def _ring(n):
    """n int slots: one early_buffers() made, else a new one."""
    for i in range(len(_early)):
        if len(_early[i]) == n:
            return _early.pop(i)
    return int_array(n)


class SampleRing:
    """Telemetry samples from the control thread to the cloud thread, in a
    ring of ints allocated once: a sample leaves no garbage in the control
    thread, and a cloud thread stalled in a TLS handshake costs no heap
    either (a list of tuples of floats there was the peak of the day).
    When full the oldest goes and `dropped` counts it."""

    def __init__(self, size):
        self.size = size
        self.buf = _ring(_TM_FIELDS * size)
        self.first = 0
        self.n = 0
        self.dropped = 0
        self.lock = _thread.allocate_lock()

    def put(self, fw_s, soc_cpct, ev_w, hz_mhz, wh_in, wh_out):
        """fw_s: seconds since FW_EPOCH_UNIX (every field fits 32 bits, half
        the RAM of 64-bit slots, until 2094), None while the clock is unset."""
        with self.lock:
            if self.n == self.size:
                self.first = (self.first + 1) % self.size
                self.n -= 1
                self.dropped += 1
            i = (self.first + self.n) % self.size * _TM_FIELDS
            b = self.buf
            b[i] = _TM_NONE if fw_s is None else fw_s
            b[i + 1] = _TM_NONE if soc_cpct is None else soc_cpct
            b[i + 2] = _TM_NONE if ev_w is None else ev_w
            b[i + 3] = _TM_NONE if hz_mhz is None else hz_mhz
            b[i + 4] = _TM_NONE if wh_in is None else wh_in
            b[i + 5] = _TM_NONE if wh_out is None else wh_out
            self.n += 1

    def pop(self):
        """The oldest sample as a telemetry record (CONTRACT units), or None."""
        with self.lock:
            if not self.n:
                return None
            i = self.first * _TM_FIELDS
            v = [None if x == _TM_NONE else x for x in self.buf[i:i + _TM_FIELDS]]
            self.first = (self.first + 1) % self.size
            self.n -= 1
        return {"ts": None if v[0] is None else v[0] + FW_EPOCH_UNIX, "soc_pct": None if v[1] is None else v[1] / 100, "ev_w": v[2],
                "grid_hz": None if v[3] is None else v[3] / 1000, "wh_in": v[4], "wh_out": v[5]}


class Controller:
    def __init__(self, cfg, clock, inverter, vehicle=None):
        self.cfg = cfg
        self.clock = clock
        self.inv = inverter
        # a CHAdeMO session (v2g.chademo), or None. CAN timing is physical:
        # it runs on the real clock even when control runs simulated time.
        self.vehicle = vehicle
        self.real_clock = Clock()
        self.period_ms = cfg["control"]["period_ms"]
        self.meas = Meas()
        self.guard = Guard(cfg, clock)
        self.plan = Plan(cfg, clock)
        k = K.new_state()
        lim = cfg["limits"]
        k[K.RAMP_W] = max(1, lim["ramp_w_per_s"] * self.period_ms // 1000)
        g = cfg["grid"]
        k[K.NOM_MHZ] = g["nominal_hz"] * 1000
        k[K.DB_MHZ] = g["deadband_mhz"]
        p_ref = max(lim["charge_w"], lim["discharge_w"])
        k[K.K_W_PER_HZ] = K.droop_gain_w_per_hz(p_ref, g["nominal_hz"], g["droop_pct"])
        self.freq_enabled = g["freq_response"]
        self.k = k
        self.tick_no = 0
        self.link_ok = False
        self.mode = "hold"
        self.reason = "starting"
        self.req_w = 0
        self.plan_soc_cpct = None
        self.last_write_ms = None
        self.heartbeat_ms = max(1000, cfg["inverter"]["revert_s"] * 1000 // 3)
        self.probe_every = max(1, 1000 // self.period_ms)  # rediscovery at ~1 Hz
        self.last_probe_tick = -1000000
        self.hb_count = 0
        self.link_errors = 0
        self.last_link_error = None
        self.overruns = 0
        self.internal_errors = 0
        # between threads: commands in; telemetry samples and events out
        self.inbox = Mailbox(16)
        self.actions_posted = 0  # post() count (cloud/REPL threads)
        self.actions_applied = 0  # actions taken from the inbox (control thread)
        self.telemetry = SampleRing(_TM_RING)
        self.events = Mailbox(64)
        self.mode_seq = 0  # bumps on every mode change (the cloud republishes state)
        self.user_mode = "auto"
        self.dispatch = None  # (ev_w, until unix s, lapses at mono_s, until fw_s)
        self.telemetry_s = cfg["mqtt"]["telemetry_s"]
        # Time (v2g.clock.Follower): lapses and periods run on its mono_s,
        # so a wall clock stepping back cannot stretch a dispatch or stop
        # telemetry; tariff and departure use now_fw_s (None: not set).
        self.time = Follower(clock)
        self.now_fw_s = None
        self.next_telemetry_s = 0  # mono_s
        self.running = False
        # Ctrl-C / SIGINT is for the main thread, which decides what stops;
        # when this thread happens to receive it, it is handed over here and
        # protection goes on (the cloud loop raises it in the main thread)
        self.interrupted = False
        self.wdt = None  # a hardware watchdog (v2g.board.watchdog), fed by every tick
        self.jitter_us = _ring(_JITTER_RING)
        self._last_fault_rec = None
        self.jitter_n = 0
        self._follow_time(clock.ticks_ms())  # a saved dispatch is checked against it

    # --- settings changed remotely or at the REPL (persisted by the caller)

    def post(self, action, reserved=False):
        """Queue an action from another thread; applied at the next tick,
        never dropped. Returns its number (applied once `actions_applied`
        reaches it), or 0 when the inbox is full: nothing was queued, ask
        again after a tick. reserved: into a slot held by inbox.reserve()."""
        n = self.inbox.offer(action, reserved)
        if n:
            self.actions_posted = n
        return n

    def apply_settings(self, s):
        """Overrides persisted by earlier commands (settings.json). A value
        that does not fit (a damaged file) is skipped with an event: the
        site config's value stays, and the firmware starts regardless."""
        for key, action in (("reserve_pct", lambda v: ("set_reserve", float(v))),
                            ("departure", lambda v: ("set_departure", int(v[0]), float(v[1]))),
                            ("mode", lambda v: ("set_mode", _user_mode(v))),
                            ("dispatch", lambda v: ("dispatch", int(v[0]), int(v[1])))):
            if key in s:
                try:
                    self._apply(action(s[key]))
                except (TypeError, ValueError, IndexError):
                    self._event("settings_ignored", {"key": key})

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
            self.guard.set_reserve(action[1])
            self.plan.reserve_pct = action[1]
            self.plan.computed_at = None
        elif op == "set_departure":
            self.plan.dep_min = action[1]
            self.plan.dep_pct = action[2]
            self.guard.set_departure_soc(action[2])
            self.plan.computed_at = None
        elif op == "set_mode":
            self.user_mode = action[1]
        elif op == "clear_fault":
            return self.guard.clear_fault()
        elif op == "pause":
            self.guard.pause()
        elif op == "resume":
            self.guard.resume()
        elif op == "read_point":
            # the REPL's read("701.W"): the bus belongs to this thread
            if not self.inv.ready:
                raise OSError("inverter link down")
            from v2g.sunspec_points import read_point

            return read_point(self.inv, action[1])
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

    def _follow_time(self, now_ms):
        """Follow the time; on a step of the wall clock (SNTP, a technician,
        an RTC reset) tell the cloud and replan on the new time."""
        self.now_fw_s, what, by_s = self.time.step(now_ms)
        if what is not None:
            self._event(what, {"by_s": by_s})
            self.plan.computed_at = None

    def soc_pct(self):
        soc = self.guard.soc_cpct
        return None if soc is None else soc / 100

    def reserve_pct(self):
        return self.guard.reserve_cpct / 100

    def departure(self):
        return self.plan.dep_min, self.plan.dep_pct

    # --- southbound

    def _southbound_read(self):
        inv = self.inv
        try:
            if not inv.ready:
                if self.tick_no - self.last_probe_tick < self.probe_every:
                    return False
                self.last_probe_tick = self.tick_no
                inv.discover()
                log.event("inverter", {"models": sorted(inv.models), "info": inv.info, "base": inv.base})
            inv.refresh(self.meas, self.tick_no)
            return True
        except ModbusError as e:
            self._link_error(e)
            return False

    def _link_error(self, e):
        self.link_errors += 1
        self.last_link_error = type(e).__name__ + ": " + str(e)
        # Rediscover once it answers again: a power-cycled inverter may come
        # back with another map or other scale factors.
        self.inv.ready = False

    def _southbound_write(self, sp_w, now_ms):
        inv = self.inv
        due = self.last_write_ms is None or self.clock.ticks_diff(now_ms, self.last_write_ms) >= self.heartbeat_ms
        if inv.last_wset == sp_w and not due:
            return
        try:
            inv.write_setpoint(sp_w)
            if due:
                self.hb_count += 1
                inv.heartbeat(self.hb_count)
            self.last_write_ms = now_ms
        except ModbusError as e:
            self._link_error(e)
            self.link_ok = False

    def _vehicle_soc(self, v):
        """The car's SoC is the one the guard protects (CONTRACT section 7);
        the inverter's 713 SoC stays in inv_soc_cpct as a cross-check."""
        m = self.meas
        m.soc_cpct = v.soc_cpct
        m.soc_res_cpct = v.soc_res_cpct
        age = v.soc_age_ms
        fresh = v.soc_cpct is not None and age is not None and age <= self.guard.stale_ticks * self.period_ms
        m.soc_tick = self.tick_no if fresh else -1

    # --- plan

    def _request(self, now_s):
        """What to ask the kernel for, in priority order: the owner's
        idle/charge_now, a cloud dispatch, the plan. now_s: now_fw_s."""
        if self.user_mode == "idle":
            return 0, "mode_idle", None
        if self.user_mode == "charge_now":
            return self.cfg["limits"]["charge_w"], "charge_now", self.plan.target_pct()
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
            return self.cfg["limits"]["charge_w"], "clock_not_set", self.plan.target_pct()
        drift = self.plan_soc_cpct is None or abs(soc - self.plan_soc_cpct) >= _SOC_REPLAN_CPCT
        if drift or self.plan.due(now_s):
            self.plan.recompute(soc / 100, now_s)
            self.plan_soc_cpct = soc
        return self.plan.request(now_s)

    # --- one tick

    def tick(self):
        self.tick_no += 1
        now_ms = self.clock.ticks_ms()
        self._follow_time(now_ms)
        now_s = self.now_fw_s
        for action in self.inbox.take():
            self._apply(action)
            self.actions_applied += 1
        self.link_ok = self._southbound_read()
        v = self.vehicle
        if v is not None:
            real_ms = self.real_clock.ticks_ms()
            v.poll(real_ms)
            self._vehicle_soc(v)
        g = self.guard
        # the guard judges the measurements first, so the plan only ever
        # sees a SoC the guard trusts
        was_mismatch = g.soc_mismatch
        g.update(self.tick_no, self.meas, self.link_ok, v)
        if g.soc_mismatch != was_mismatch:
            self._event("soc_mismatch" if g.soc_mismatch else "soc_mismatch_cleared",
                        {"vehicle_soc_pct": _pct(g.soc_cpct), "inverter_soc_pct": _pct(self.meas.inv_soc_cpct)})
        req_w, why, ceiling_pct = self._request(now_s)
        self.req_w = req_w
        g.limits(None if ceiling_pct is None else int(ceiling_pct * 100 + 0.5), v)
        if v is not None:
            # the car hears our intent (direction, offered current) every
            # 100 ms; its limits already bound the window above
            v.cycle(real_ms, req_w if g.state == RUN else 0)
        k = self.k
        k[K.REQ_W] = req_w
        k[K.LO_W] = g.lo_w
        k[K.HI_W] = g.hi_w
        k[K.HZ_MHZ] = g.hz_mhz or 0
        k[K.FREQ_EN] = 1 if self.freq_enabled and not self.inv.inverter_droop else 0
        k[K.STOP] = 1 if g.state == FAULT else 0
        sp = K.tick(k)
        self._set_mode(g, req_w, why)
        if self.link_ok:
            self._southbound_write(sp, now_ms)
        mono = self.time.mono_s
        if mono >= self.next_telemetry_s:
            self.next_telemetry_s = mono - mono % self.telemetry_s + self.telemetry_s
            g, m = self.guard, self.meas
            self.telemetry.put(now_s, g.soc_cpct, g.ev_w, g.hz_mhz,
                               getattr(m, "wh_in", None), getattr(m, "wh_out", None))
        return sp

    def _event(self, kind, fields):
        self.events.put(log.record(kind, fields, self.clock.time()))

    def _set_mode(self, g, req_w, why):
        k = self.k
        if g.state == FAULT:
            mode, reason = "fault", g.reason
        elif g.state == HOLD:
            mode, reason = "hold", g.reason
        else:
            target = k[K.TARGET_W]
            mode = "charge" if target > 0 else "discharge" if target < 0 else "idle"
            reason = why
            if req_w < 0 and g.at_floor:
                reason = "reserve_reached"
            elif req_w > 0 and g.at_ceiling:
                reason = "soc_limit_reached"
            elif k[K.DROOP_W] and (req_w == 0 or (target > 0) != (req_w > 0)):
                reason = "freq_response"
        if mode != self.mode or reason != self.reason:
            self.mode, self.reason = mode, reason
            self.mode_seq += 1
            self._event("mode", self.snapshot())
        f = g.fault_log
        if len(f) and f[-1] is not self._last_fault_rec:
            self._last_fault_rec = f[-1]
            t, what, code = f[-1]
            self._event("fault_" + what, {"fault": code})

    def snapshot(self):
        """The state record (CONTRACT section 4 `state`)."""
        g = self.guard
        m = self.meas
        soc = g.soc_cpct
        now = self.now_fw_s
        snap = {
            "ts": None if now is None else now + FW_EPOCH_UNIX,
            "clock_set": now is not None,
            "mode": self.mode,
            "soc_pct": None if soc is None else soc / 100,
            "ev_w": g.ev_w,
            "setpoint_w": self.k[K.SP_W],
            "reserve_pct": g.reserve_cpct / 100,
            "grid_hz": None if g.hz_mhz is None else g.hz_mhz / 1000,
            "fault": g.fault,
            "reason": self.reason,
            "wh_in": getattr(m, "wh_in", None),
            "wh_out": getattr(m, "wh_out", None),
        }
        if self.vehicle is not None:
            snap["vehicle"] = self.vehicle.state
        return snap

    def stop_output(self):
        """Best effort on a clean stop: command 0 W (the inverter's reversion
        timer covers the case where this write cannot get through)."""
        try:
            if self.inv.ready:
                self.inv.write_setpoint(0)
        except ModbusError:
            pass

    def _zero(self):
        """Kernel stopped (setpoint 0 in what state reports) and 0 W written."""
        self.k[K.STOP] = 1
        K.tick(self.k)
        self.stop_output()

    def _internal_error(self, e):
        # A bug must not leave power flowing: stop the kernel, command 0 W,
        # report, and go on ticking (the next tick may well succeed).
        self.internal_errors += 1
        self._zero()
        self._event("internal_error", {"error": type(e).__name__ + ": " + str(e), "where": where(e)})

    # --- loop

    def run(self, stop_after_ticks=None):
        """The fixed-period loop; returns after stop_after_ticks or when
        `running` is cleared (by another thread). Scheduled in real
        microseconds (a warped clock runs `warp` times faster, so the real
        period is period / warp); a tick's start delay is recorded."""
        period_us = int(self.period_ms * 1000 / self.clock.warp)
        next_us = time.ticks_us()
        n = 0
        self.running = True
        while self.running and (stop_after_ticks is None or n < stop_after_ticks):
            late_us = time.ticks_diff(time.ticks_us(), next_us)
            self.jitter_us[self.jitter_n % _JITTER_RING] = late_us
            self.jitter_n += 1
            try:
                self.tick()
                if self.wdt is not None:
                    # fed only here: if the control loop hangs, the board
                    # resets, and the inverter's own timer has gone to 0 W
                    self.wdt.feed()
            except KeyboardInterrupt:
                self.interrupted = True
            except Exception as e:  # noqa: BLE001 - the loop must outlive a bug
                self._internal_error(e)
            n += 1
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
                        self.interrupted = True
                    wait_us = time.ticks_diff(next_us, time.ticks_us())
        if stop_after_ticks is None:
            # stopped by another thread (a clean stop): 0 W from the bus's
            # owner, at the next tick's time at the latest. A further Ctrl-C
            # landing here must not skip it.
            for _ in range(5):
                try:
                    self._zero()
                    break
                except KeyboardInterrupt:
                    self.interrupted = True
            # the last state the cloud gets says so
            self.mode, self.reason = "idle", "stopped"
            self.mode_seq += 1

    def tick_stats(self):
        """Tick start delay in ms over the last ticks: (p50, p99, max, count).
        Sorts the ring in place (it is a multiset of recent delays, its order
        means nothing): no allocation, so it works in a full heap too."""
        n = min(self.jitter_n, _JITTER_RING)
        if n == 0:
            return None
        v = self.jitter_us
        gap = n // 2
        while gap:  # shell sort
            for i in range(gap, n):
                x = v[i]
                j = i
                while j >= gap and v[j - gap] > x:
                    v[j] = v[j - gap]
                    j -= gap
                v[j] = x
            gap //= 2
        return (v[n // 2] / 1000, v[min(n - 1, n * 99 // 100)] / 1000, v[n - 1] / 1000, n)
