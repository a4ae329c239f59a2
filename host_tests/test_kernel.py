"""Viper control kernel: behaviour, no allocation, and 31-bit-safe arithmetic."""
import itertools
import json

from conftest import run_mp

LIM = 2**21
BOUND = 2**29
SLOTS = ["REQ_W", "LO_W", "HI_W", "RAMP_W", "HZ_MHZ", "NOM_MHZ", "DB_MHZ", "K_W_PER_HZ", "FREQ_EN", "STOP"]


def clamp(v, lo, hi):
    return max(lo, min(hi, v))


def reference_tick(inp, sp):
    """The kernel's specification in plain Python with unbounded ints; every
    intermediate is checked against +-2**29 (the boards' small-int range)."""
    seen = []

    def chk(v):
        seen.append(v)
        assert -BOUND <= v <= BOUND, v
        return v

    if inp["STOP"]:
        return 0, 0, 0
    req = clamp(inp["REQ_W"], -LIM, LIM)
    lo = clamp(inp["LO_W"], -LIM, 0)
    hi = clamp(inp["HI_W"], 0, LIM)
    sp = clamp(sp, -LIM, LIM)
    step = clamp(inp["RAMP_W"], 1, LIM)
    droop = 0
    if inp["FREQ_EN"] and inp["HZ_MHZ"] > 0:
        dev = chk(clamp(inp["HZ_MHZ"] - inp["NOM_MHZ"], -5000, 5000))
        db = clamp(inp["DB_MHZ"], 0, 2000)
        k = clamp(inp["K_W_PER_HZ"], 0, LIM)
        x = dev - db if dev > db else (-db - dev if dev < -db else 0)
        mag = chk(chk(x * (k // 1000)) + chk(x * (k % 1000)) // 1000)
        mag = min(mag, LIM)
        droop = mag if dev > 0 else -mag
    target = chk(clamp(chk(req + droop), lo, hi))
    d = clamp(chk(target - sp), -step, step)
    sp = clamp(chk(sp + d), lo, hi)
    return sp, target, droop


def run_cases(tmp_path, cases):
    """cases: list of (inputs dict, start setpoint) -> [(sp, target, droop)]"""
    path = tmp_path / "kernel_cases.json"
    path.write_text(json.dumps(cases))
    return [tuple(x) for x in run_mp("kernel_cases", "ticks", path).json()]


def base(**kw):
    d = dict(REQ_W=0, LO_W=-7000, HI_W=7000, RAMP_W=200, HZ_MHZ=50000, NOM_MHZ=50000,
             DB_MHZ=200, K_W_PER_HZ=2800, FREQ_EN=1, STOP=0)
    d.update(kw)
    return d


def test_behaviour_matches_specification(tmp_path):
    cases = [
        (base(REQ_W=5000), 0),                     # ramps up by one step
        (base(REQ_W=5000), 4900),                  # reaches the target
        (base(REQ_W=-5000), 0),                    # ramps down
        (base(REQ_W=9000), 6950),                  # clamped to hi
        (base(REQ_W=-9000, LO_W=0), -3000),        # reserve: export cut at once
        (base(REQ_W=3000, HI_W=1000), 3000),       # ceiling tightened: cut at once
        (base(REQ_W=3000, STOP=1), 3000),          # fault: 0 now
        (base(REQ_W=0, HZ_MHZ=49500), 0),          # under-frequency: export
        (base(REQ_W=0, HZ_MHZ=50500, RAMP_W=5000), 0),  # over-frequency: charge
        (base(REQ_W=0, HZ_MHZ=50150), 0),          # inside the deadband
        (base(REQ_W=0, HZ_MHZ=49500, FREQ_EN=0), 0),
        (base(REQ_W=0, HZ_MHZ=0), 0),              # unknown frequency: no droop
        (base(REQ_W=0, HZ_MHZ=49500, LO_W=0), 0),  # droop cannot break the reserve
    ]
    got = run_cases(tmp_path, cases)
    want = [reference_tick(inp, sp) for inp, sp in cases]
    assert got == want
    assert got[0][0] == 200 and got[1][0] == 5000 and got[2][0] == -200
    assert got[3] == (7000, 7000, 0)
    assert got[4][0] == 0 and got[5][0] == 1000 and got[6] == (0, 0, 0)
    assert got[7][2] == -840 and got[7][0] == -200      # (300 mHz) * 2800 W/Hz
    assert got[8][2] == 840 and got[8][0] == 840
    assert got[9][2] == 0 and got[11][2] == 0 and got[12][0] == 0


def test_extreme_inputs_stay_within_31_bit_range(tmp_path):
    extremes = [-2**31, -2**29 - 1, -LIM - 1, -7000, -1, 0, 1, 7000, LIM + 1, 2**29 + 1, 2**31 - 1]
    freq = [-2**31, 0, 1, 40000, 49000, 50000, 51000, 70000, 2**31 - 1]
    cases = []
    for req, lo, hi in itertools.product(extremes, extremes[:6], extremes[5:]):
        cases.append((base(REQ_W=req, LO_W=lo, HI_W=hi, RAMP_W=2**31 - 1), extremes[len(cases) % len(extremes)]))
    for hz, k, db in itertools.product(freq, [-1, 0, 2800, LIM, 2**31 - 1], [-5, 0, 200, 2**31 - 1]):
        cases.append((base(REQ_W=0, HZ_MHZ=hz, K_W_PER_HZ=k, DB_MHZ=db, RAMP_W=LIM,
                           LO_W=-LIM, HI_W=LIM), 0))
    for ramp in (-2**31, -1, 0, 1, 2**31 - 1):
        cases.append((base(REQ_W=LIM, RAMP_W=ramp, HI_W=LIM), -LIM))
    got = run_cases(tmp_path, cases)
    want = [reference_tick(inp, sp) for inp, sp in cases]  # asserts the bound
    assert got == want
    for sp, target, droop in got:
        assert -LIM <= sp <= LIM and -LIM <= target <= LIM


def test_no_allocation_over_ten_thousand_ticks():
    res = run_mp("kernel_cases", "no_allocation")
    assert res.lines()[-1] == "0"
