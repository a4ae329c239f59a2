# test_control.py's MicroPython half for the pieces of the control loop that
# need no live inverter (host_tests/mp/cases.py); the live-inverter tests
# drive host_tests/mp/control_harness.py instead.
import gc
import json

import cases
from v2g import config, log
from v2g.clock import FW_EPOCH_UNIX, Clock
from v2g.control import Controller
from v2g.shared import SampleRing, StatusRecord

log.quiet = True


class NoInverter:
    # never discovered: apply_settings must not need a link
    ready = False
    inverter_droop = False
    models = {}


def damaged_settings():
    # -> [ignored keys, reserve %, user mode] after a damaged then a good settings doc
    c = Controller(config.load("examples/site.json"), Clock(), NoInverter())
    c.apply_settings({"reserve_pct": "lots", "departure": [450], "mode": "turbo", "dispatch": None})
    c.apply_settings({"reserve_pct": 40, "mode": "idle"})
    r = c.shared.read()
    return [[e["key"] for e in map(json.loads, c.shared.events.take()) if e["ev"] == "settings_ignored"], r["reserve_cpct"] / 100,
            r["user_mode"]]


class FailingInverter:
    """Discovered, then every refresh and setpoint write raises what a full
    heap raises."""
    ready = True
    inverter_droop = False
    models = {}
    last_wset = None

    def refresh(self, m, tick):
        raise MemoryError("memory allocation failed")

    def write_setpoint(self, w):
        raise MemoryError("memory allocation failed")

    def heartbeat(self, n):
        pass


def internal_error_while_zeroing():
    # -> {ticks, internal_errors, setpoint_w, events}: run() must come back
    # (the control thread goes on), the kernel stopped at 0 W
    from v2g import kernel as K

    c = Controller(config.load("examples/site.json"), Clock(), FailingInverter())
    c.run(stop_after_ticks=5)
    evs = [e["ev"] for e in map(json.loads, c.shared.events.take())]
    return {"ticks": c.tick_no, "internal_errors": c.internal_errors, "setpoint_w": c.k[K.SP_W],
            "events": evs.count("internal_error")}


def telemetry_ring():
    # prints {"dropped", "recs", "grown"}, then returns the all-None record
    r = SampleRing(4)
    # a first round trip, so that nothing done once on first use is counted
    r.put(0, 0, 0, 0, 0, 0)
    r.pop()
    i = 0  # a local: no dict to grow while measuring, as a new global could
    gc.collect()
    before = gc.mem_alloc()
    while i < 1000:  # (a for loop's range iterator would be garbage itself)
        r.put(1781452800 - FW_EPOCH_UNIX + i, 4512, -3000, 50012, 1000, 7)
        i += 1
    grown = gc.mem_alloc() - before
    while r.pop():
        pass
    r.dropped = 0
    for i in range(6):
        r.put(1781452800 - FW_EPOCH_UNIX + i, 4512 + i, -3000 - i, 50012, None if i == 5 else 1000 + i, 7)
    recs = []
    while True:
        x = r.pop()
        if x is None:
            break
        recs.append(x)
    print(json.dumps({"dropped": r.dropped, "recs": recs, "grown": grown}))
    r.put(None, None, None, None, None, None)
    return r.pop()


def tick_stats(seed):
    # -> {"delays": what was noted, "stats": tick_stats(), "grown": bytes}:
    # 300 delays (the 256-slot ring wraps), negative ones and one beyond
    # the clamp among them; the host checks the order statistics
    import random

    random.seed(int(seed))
    rec = StatusRecord()
    delays = []
    i = 0
    while i < 300:
        d = random.getrandbits(16) - 20000
        if i == 290:
            d = 10**10  # clamped to 2**29 - 1 us
        rec.note_delay(d, i * 200000)
        delays.append(d)
        i += 1
    rec.tick_stats()  # anything done once on first use
    gc.collect()
    before = gc.mem_alloc()
    st = rec.tick_stats()
    grown = gc.mem_alloc() - before
    return {"delays": delays, "stats": st, "grown": grown}


cases.main(globals())
