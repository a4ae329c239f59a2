# test_plan.py's MicroPython half: v2g.plan.Plan (host_tests/mp/cases.py).
import json

import cases
from v2g import config
from v2g.plan import Plan


def plans(path):
    # PATH: a JSON list of [raw config, SoC %, now(, AC Wh exported today)];
    # a plan each -> [{"segs": [...], "req": [...], "short": Wh, "dep": departure s}, ...]
    out = []
    for case in json.loads(open(path).read()):
        raw, soc, now = case[:3]
        p = Plan(config.validate(raw), None)
        segs = p.recompute(soc, now, case[3] if len(case) > 3 else 0)
        out.append({"segs": [[s.t0, s.t1, s.imp, s.exp, s.c_wh, s.d_wh, s.why] for s in segs],
                    "req": list(p.request(now)), "short": p.shortfall_wh, "dep": p.departure_s})
    return out


def months(path):
    # PATH: [[t_s, utc_offset_min], ...] -> v2g.clock.local_month of each
    from v2g.clock import local_month

    return [local_month(t, off) for t, off in json.loads(open(path).read())]


cases.main(globals())
