# test_clock_trust.py's MicroPython half: a Controller on a clock the case
# moves, ticks and wall separately (host_tests/mp/cases.py). Wall times come
# as unix seconds on the command line, so that the test holds them once.
import json
import cases
from dead_inverter import DeadInverter
from v2g import config, log
from v2g.clock import Clock
from v2g.control import Controller
from v2g.shared import state_of

log.quiet = True


class FakeClock(Clock):
    # wall = wall0 + ticks: moving wall0 alone is a step of the wall clock
    # that the monotonic ticks do not see
    warp = 1

    def __init__(self, wall_s):
        self.ms = 0
        self.wall0 = wall_s

    def ticks_ms(self):
        return self.ms

    def ticks_diff(self, a, b):
        return a - b

    def time(self):
        return self.wall0 + self.ms // 1000


class CountingClock(FakeClock):
    # each wall read is a big int on a 32-bit board's heap: counted
    reads = 0

    def time(self):
        self.reads += 1
        return FakeClock.time(self)


def _cfg():
    return config.load("examples/site.json")


def _started(wall_s):
    # a controller at 70 % SoC, one second after start
    clk = FakeClock(wall_s)
    c = Controller(_cfg(), clk, DeadInverter())
    c.guard.soc_cpct = 7000
    clk.ms += 1000
    c._follow_time(clk.ms)
    return clk, c


def _evs(c, kind):
    return [e for e in map(json.loads, c.shared.events.take()) if e["ev"] == kind]


def _snapshot(c):
    c._publish()
    return state_of(c.shared.read())


def unset_clock(y2000):
    y2000 = int(y2000)
    clk = FakeClock(y2000 + 19 * 3600)
    c = Controller(_cfg(), clk, DeadInverter())
    # saved by a command before the reboot: it must not run on an unset clock
    c.apply_settings({"dispatch": [-5000, y2000 + 20 * 3600]})
    dropped = _evs(c, "dispatch_dropped")
    c.guard.soc_cpct = 7000  # 70 %: at the evening peak a plan would export
    reqs = set()
    for i in range(3600):  # an hour, a request per second
        clk.ms += 1000
        c._follow_time(clk.ms)
        w, why, ceiling = c._request(c.now_fw_s)
        reqs.add((w, why, ceiling))
    return {"dropped": dropped, "dispatch": c.dispatch, "reqs": sorted(reqs), "now": c.now_fw_s,
            "snap": _snapshot(c)}


def clock_set_later(y2000, evening_s):
    y2000, evening_s = int(y2000), int(evening_s)
    clk, c = _started(y2000)
    before = c._request(c.now_fw_s)[1]
    clk.wall0 = evening_s - 1  # SNTP answered
    clk.ms += 5000
    c._follow_time(clk.ms)
    set_evs = _evs(c, "clock_set")
    after = c._request(c.now_fw_s)[1]
    # a saved dispatch 5 h ahead (a clock that was wrong when it was saved)
    c.apply_settings({"dispatch": [-5000, evening_s + 5 * 3600]})
    return {"before": before, "after": after, "set": set_evs, "dropped": _evs(c, "dispatch_dropped"),
            "ts": _snapshot(c)["ts"]}


def wall_clock_steps_back(evening_s):
    evening_s = int(evening_s)
    clk, c = _started(evening_s)
    c._do(("dispatch", -3000, evening_s + 1 + 1800))  # 30 min
    samples = 0
    jumps = []
    replans = []
    whys = []
    for s in range(1, 2401):  # 40 min in 1 s steps
        clk.ms += 1000
        if s in (600, 2000):
            clk.wall0 -= 3600  # the wall clock steps back an hour (in the dispatch, then in the plan)
        c.tick()
        # tick() judged the dead link: give the plan a SoC again, ask directly
        c.guard.soc_cpct = 7000
        before = c.plan.computed_at
        w, why, _ = c._request(c.now_fw_s)
        if c.plan.computed_at != before:
            replans.append(s)
        whys.append(why)
        jumps += [e for e in map(json.loads, c.shared.events.take()) if e["ev"] in ("clock_jump", "dispatch_lapsed")]
        while c.shared.telemetry.pop():
            samples += 1
    return {"jumps": jumps, "whys": whys, "samples": samples, "replans": replans}


def wall_reads_per_tick(evening_s):
    clk = CountingClock(int(evening_s))
    c = Controller(_cfg(), clk, DeadInverter())
    r0 = clk.reads
    for i in range(1000):
        clk.ms += c.period_ms
        c.tick()
    return {"reads": clk.reads - r0, "ticks": 1000}


def wifi_at_boot(shim):
    import sys

    # the stand-in `network` must shadow any real one before board asks for it
    sys.path.insert(0, shim)
    from v2g.board import wifi_up

    import network

    cfg = _cfg()
    none = wifi_up(cfg)
    cfg["wifi"] = {"ssid": "farmhouse", "password": "pw-123456"}
    w = wifi_up(cfg)
    return {"none": none is None, "calls": network.calls, "got": w is not None}


cases.main(globals())
