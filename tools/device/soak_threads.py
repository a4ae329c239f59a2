# Concurrency soak on the unix port (_thread): the real control loop runs in
# its own thread while a cloud-like thread and REPL-helper threads hammer its
# shared port (the status record and the inbox). Every snapshot is checked:
# its fields come from one tick, and mode and reason agree with the guard.
#
# usage: micropython soak_threads.py SITE_JSON SECONDS
# prints one JSON line: counts and the first violations (none expected).
import json
import sys
import time

import _thread

from v2g import config, log
from v2g.clock import Clock
from v2g.control import Controller

log.quiet = True
SECONDS = float(sys.argv[2])

HOLD_REASONS = ("starting", "paused", "soc_unknown", "soc_mismatch", "power_unknown", "stopped")
FAULT_REASONS = ("link_lost", "inverter_fault", "vehicle_fault")


class TickStampedInverter:
    """An inverter whose readings carry the tick that read them: wh_in is the
    tick number, so a record mixing two ticks shows. Every 97th tick the
    link fails and every 389th it reports a fault, so the guard moves."""

    ready = True
    inverter_droop = False
    models = {1: (0, 66), 701: (0, 153), 704: (0, 65)}

    def __init__(self):
        self.last_wset = None
        self.info = {}
        self.base = 40000

    def discover(self):
        self.ready = True

    def refresh(self, m, tick):
        from v2g.modbus import LinkLost

        if tick % 97 == 0:
            raise LinkLost(OSError(110))
        # the car away for 150 ticks in every 1,000 (713 SoC not implemented)
        m.plugged = tick % 1000 >= 150
        m.soc_cpct = 5000 + (tick // 50) % 2000 if m.plugged else None
        m.soc_tick = m.ev_tick = m.hz_tick = tick
        m.ev_w = self.last_wset or 0
        m.hz_mhz = 49900 + tick % 200  # crosses the deadband: droop on and off
        m.wh_in = tick
        m.wh_out = tick
        m.inv_fault = "inverter_alarm" if tick % 389 < 3 else None

    def write_setpoint(self, w):
        self.last_wset = w

    def heartbeat(self, n):
        pass


cfg = config.load(sys.argv[1])
ctrl = Controller(cfg, Clock(), TickStampedInverter())
shared = ctrl.shared
bad = []
counts = {"absent": 0, "snapshots": 0, "posted": 0, "refused": 0, "asked": 0, "answered": 0, "stats": 0, "events": 0,
          "exceptions": 0}
lock = _thread.allocate_lock()
done = {"control": False}


def violation(what, rec):
    with lock:
        if len(bad) < 10:
            bad.append([what, rec])


def check(rec, last_tick):
    t = rec["tick_no"]
    if t < last_tick:
        violation("tick went back", rec)
    if t > 0:
        if rec["link_ok"] and rec["wh_in"] != t:
            violation("wh_in from another tick", rec)
        gs, mode, reason = rec["guard_state"], rec["mode"], rec["reason"]
        if reason == "stopped":
            ok = mode == "idle"
        elif reason == "vehicle_absent":
            counts["absent"] += 1
            ok = gs == "hold" and mode == "idle" and rec["plugged"] is False and rec["fault"] is None
        elif gs == "fault":
            ok = mode == "fault" and reason in FAULT_REASONS and rec["fault"] is not None
        elif gs == "hold":
            ok = mode == "hold" and reason in HOLD_REASONS and rec["fault"] is None
        else:
            ok = mode in ("charge", "discharge", "idle") and reason not in HOLD_REASONS + FAULT_REASONS + (
                "vehicle_absent",)
        if not ok:
            violation("mode/reason do not fit the guard state", rec)
        if gs != "run" and (rec["lo_w"] != 0 or rec["hi_w"] != 0):
            violation("a power window outside run", rec)
        if gs == "fault" and rec["setpoint_w"] != 0:
            violation("setpoint in fault", rec)
    return t


def guarded(fn):
    def run():
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - counted and reported
            with lock:
                counts["exceptions"] += 1
            violation("exception " + repr(e), None)
    return run


@guarded
def cloud_thread():
    # as the cloud link: state records, events and telemetry out, commands in
    last = 0
    n = 0
    while not done["control"]:
        rec = shared.read()
        last = check(rec, last)
        n += 1
        counts["snapshots"] += 1
        if n % 7 == 0:
            counts["events"] += len(shared.events.take())
            while shared.telemetry.pop():
                pass
        if n % 5 == 0 and shared.inbox.reserve():
            shared.post(("set_reserve", 20 + n % 30), True)
            counts["posted"] += 1
        if n % 11 == 0:
            mode = ("auto", "charge_now", "idle")[n % 3]
            if shared.post(("set_mode", mode)):
                counts["posted"] += 1
            else:
                counts["refused"] += 1


@guarded
def repl_thread():
    # as tech.py's helpers: actions with a reply box, tick statistics
    last = 0
    n = 0
    while not done["control"]:
        n += 1
        box = []
        action = (("pause",), ("resume",), ("clear_fault",))[n % 3]
        t0 = time.ticks_ms()
        while not shared.post(action + (box,)):
            if done["control"]:
                return
            time.sleep_ms(1)
        counts["asked"] += 1
        while not box and time.ticks_diff(time.ticks_ms(), t0) < 3000 and not done["control"]:
            last = check(shared.read(), last)
        if box:
            counts["answered"] += 1
        elif not done["control"]:
            violation("no answer within 3 s to " + action[0], None)
        st = shared.status.tick_stats()
        if st is not None:
            counts["stats"] += 1
            if not st[0] <= st[1] <= st[2]:
                violation("tick stats out of order", list(st))


def control_thread():
    try:
        ctrl.run()
    finally:
        done["control"] = True


def main():
    # Everything here is local: a global made while the other threads run
    # would grow the module's dict under their lookups (no GIL on an
    # RP2040; here it showed as NameError: name 'done' isn't defined).
    _thread.start_new_thread(control_thread, ())
    _thread.start_new_thread(cloud_thread, ())
    _thread.start_new_thread(repl_thread, ())
    _thread.start_new_thread(repl_thread, ())
    t_end = time.ticks_add(time.ticks_ms(), int(SECONDS * 1000))
    last = 0
    while time.ticks_diff(t_end, time.ticks_ms()) > 0:
        last = check(shared.read(), last)
        counts["snapshots"] += 1
        time.sleep_ms(3)
    # every action queued before the stop must be applied; the helpers keep
    # posting until the control thread has returned, and those may not be
    offered_before_stop = shared.inbox.offered
    shared.request_stop()
    t0 = time.ticks_ms()
    while not done["control"] and time.ticks_diff(time.ticks_ms(), t0) < 10000:
        time.sleep_ms(10)
    time.sleep_ms(200)  # the other threads see `done` and end
    rec = shared.read()
    print(json.dumps({"ticks": rec["tick_no"], "stopped": rec["stopped"], "mode": rec["mode"], "reason": rec["reason"],
                      "applied": rec["actions_applied"], "offered": shared.inbox.offered,
                      "offered_before_stop": offered_before_stop,
                      "dropped": shared.inbox.dropped, "internal_errors": rec["internal_errors"],
                      "control_returned": done["control"], "counts": counts, "bad": bad}))


main()
