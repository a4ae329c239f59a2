# test_guard.py's MicroPython half (host_tests/mp/cases.py): the guard
# driven step by step with a fake clock, measurements and a fake car.
import json

import cases
from v2g import config
from v2g.guard import STATE_NAMES, Guard
from v2g.meas import Meas
from v2g.vehicle import VehicleSession


class FakeClock:
    def __init__(self, t0_s):
        self.t0_s = t0_s
        self.ms = 0

    def ticks_ms(self):
        return self.ms

    def ticks_diff(self, a, b):
        return a - b

    def time(self):
        return self.t0_s + self.ms // 1000


class FakeVehicle(VehicleSession):
    # a car's session as the guard reads it: the declared interface, its
    # attributes set from a scenario step
    def __init__(self, d):
        super().__init__()
        self.plugged = d.get("plugged", True)
        self.fault = d.get("fault")
        self.must_stop = d.get("must_stop", False)
        self.state = d.get("state", "charging")
        self.charge_limit_w = d.get("charge_limit_w", 100000)
        self.discharge_limit_w = d.get("discharge_limit_w", 100000)


def scenarios(cfg_path, scenarios_path):
    # SCENARIOS: a JSON list of scenarios, each a list of steps -> per
    # scenario, one row per step: [state, reason, fault, lo_w, hi_w, soc_cpct,
    # hz_mhz, published mode, its reason (decide_mode on an idle plan)]
    cfg = config.validate(json.loads(open(cfg_path).read()))
    out = []
    for scenario in json.loads(open(scenarios_path).read()):
        clock = FakeClock(1767225600)
        g = Guard(cfg, clock)
        m = Meas()
        tick = 0
        rows = []
        for st in scenario:
            tick += 1
            clock.ms += st.get("dt_ms", 200)
            for cmd in st.get("cmd", []):
                # "settings.NAME": the settings object the guard reads (as the
                # control loop applies an owner's command), else a guard method
                name, args = (cmd[0], cmd[1:]) if isinstance(cmd, list) else (cmd, ())
                target = g
                if name.startswith("settings."):
                    target, name = g.settings, name[9:]
                getattr(target, name)(*args)
            fresh = st.get("fresh", True)
            for k in ("soc_cpct", "ev_w", "hz_mhz", "inv_fault", "inv_soc_cpct", "plugged"):
                if k in st:
                    setattr(m, k, st[k])
            if fresh:
                m.soc_tick = m.ev_tick = m.hz_tick = tick
            v = FakeVehicle(st["vehicle"]) if "vehicle" in st else None
            g.update(tick, m, st.get("link", True), v)
            g.limits(st.get("ceiling"), v)
            g.decide_mode(0, "plan_idle", 0, 0)
            rows.append([STATE_NAMES[g.state], g.reason, g.fault, g.lo_w, g.hi_w, g.soc_cpct, g.hz_mhz,
                         g.mode, g.mode_reason])
        out.append(rows)
    return out


def fault_log():
    # link lost and back, an inverter fault raised and cleared -> the guard's fault_log
    cfg = config.load("examples/site.json")
    c = FakeClock(1000)
    g = Guard(cfg, c)
    m = Meas()
    m.soc_cpct, m.ev_w, m.hz_mhz = 5000, 0, 50000
    for t, link, fault, clear in ((1, True, None, 0), (2, False, None, 0), (3, True, None, 0),
                                  (4, True, "storage_error", 0), (5, True, None, 1)):
        c.ms += 1000
        m.soc_tick = m.ev_tick = m.hz_tick = t
        m.inv_fault = fault
        if clear:
            g.clear_fault()
        g.update(t, m, link)
    return g.fault_log


cases.main(globals())
