"""Plan: departure first, cheapest periods, export only what can be replaced."""
import copy
import json

import pytest

from conftest import ROOT, run_mp

CFG = json.loads((ROOT / "examples" / "site.json").read_text())
# The cases below are about the allocation against one day's schedule
# (tariff.periods) and start on 1 January, a winter month of the example's
# tariff.seasons: they keep the one schedule; the seasons have their own cases.
SEASONS = CFG["tariff"].pop("seasons")
T0 = 1767196800  # 2026-01-01 00:00 local (UTC+8) = 2025-12-31 16:00 UTC


def plans(tmp_path, cases):
    """cases: [(cfg, soc_pct, now)] -> per case: {"segs": [...], "req": [...], "short": wh}"""
    path = tmp_path / "plan_cases.json"
    path.write_text(json.dumps(cases))
    return run_mp("plan_cases", "plans", path).json()


def soc_path(cfg, soc_pct, segs):
    cap = cfg["battery"]["capacity_wh"] / 100
    e = soc_pct * cap
    path = [e / cap]
    for _, _, _, _, c, d, _ in segs:
        e += c - d
        path.append(e / cap)
    return path


def hours_local(t):
    return (t - T0) / 3600


def test_night_charge_reaches_departure_in_cheapest_period_only(tmp_path):
    (r,) = plans(tmp_path, [(CFG, 50, T0)])
    segs = r["segs"]
    path = soc_path(CFG, 50, segs)
    assert path[-1] >= 80
    assert r["short"] == 0
    for t0, t1, imp, exp, c, d, why in segs:
        if c > 0:
            assert imp == 0.31, "charged outside the valley"
        assert d == 0  # nothing worth exporting before 07:00
    # ends 30 min before the 07:30 departure, spread evenly: the lowest power
    assert hours_local(r["dep"]) == 7.5
    assert hours_local(segs[-1][1]) == 7.0
    w, why, ceiling = r["req"]
    assert why == "departure_charge" and 0 < w < 7000 and ceiling == 80.1
    assert abs(w * 7 * 0.93 - (80.1 - 50) * 600) < 7 * 0.93 * 2


def test_day_exports_at_peaks_and_keeps_departure_and_reserve(tmp_path):
    (r,) = plans(tmp_path, [(CFG, 80, T0 + 8 * 3600)])
    segs = r["segs"]
    path = soc_path(CFG, 80, segs)
    assert min(path) >= 30 - 1e-6
    assert path[-1] >= 80
    exported = {(hours_local(t0) % 24, hours_local(t1) % 24): d for t0, t1, _, _, _, d, _ in segs if d > 0}
    assert set(exported) <= {(10, 15), (18, 21)}
    assert exported[(18, 21)] > 0  # best-paid first
    charged = [(imp, c) for _, _, imp, _, c, _, _ in segs if c > 0]
    assert charged and all(imp == 0.31 for imp, _ in charged)


def test_below_reserve_charges_at_once_even_at_peak(tmp_path):
    (r,) = plans(tmp_path, [(CFG, 20, T0 + 18 * 3600)])
    w, why, _ = r["req"]
    assert why == "below_reserve" and w > 0
    path = soc_path(CFG, 20, r["segs"])
    assert path[1] >= 30 - 1e-6 or r["segs"][0][4] >= (30 - 20) * 600 - 1


def test_departure_out_of_reach_reports_shortfall_and_charges_flat_out(tmp_path):
    (r,) = plans(tmp_path, [(CFG, 10, T0 + 5 * 3600)])  # 1.5 h before 06:30 cut-off... 2 h to go
    assert r["short"] > 0
    w, why, _ = r["req"]
    assert w == 7000


def test_high_wear_cost_stops_arbitrage(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["battery"]["wear_cost_per_kwh"] = 5
    (r,) = plans(tmp_path, [(cfg, 80, T0 + 8 * 3600)])
    assert all(d == 0 for *_, d, _ in r["segs"])


def test_no_export_when_discharge_disabled(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["limits"]["discharge_w"] = 0
    (r,) = plans(tmp_path, [(cfg, 85, T0 + 18 * 3600)])
    assert all(d == 0 for *_, d, _ in r["segs"])
    assert r["req"][0] == 0


def test_surplus_above_departure_is_exported_without_recharge_when_it_pays(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["departure"]["soc_pct"] = 40
    (r,) = plans(tmp_path, [(cfg, 80, T0 + 18 * 3600)])
    segs = r["segs"]
    path = soc_path(cfg, 80, segs)
    assert min(path) >= 30 - 1e-6 and path[-1] >= 40
    assert segs[0][5] > 0 and r["req"][0] < 0 and r["req"][1] in ("peak_export", "surplus_export")


def test_departure_above_soc_max_gets_a_ceiling(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["departure"]["soc_pct"] = 95
    (r,) = plans(tmp_path, [(cfg, 85, T0 + 1 * 3600)])
    w, why, ceiling = r["req"]
    assert why == "departure_charge" and ceiling == 95.1
    assert soc_path(cfg, 85, r["segs"])[-1] >= 95


def test_request_follows_time_and_wrapping_periods(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["utc_offset_min"] = 0
    cfg["tariff"]["periods"] = [
        {"start": "22:00", "end": "02:00", "import": 0.1, "export": 0.05},
        {"start": "02:00", "end": "22:00", "import": 0.5, "export": 0.3}]
    now = T0 + 8 * 3600 + 20 * 3600  # 20:00 UTC
    (r,) = plans(tmp_path, [(cfg, 50, now)])
    segs = r["segs"]
    starts = [((t0 // 60) % 1440) for t0, *_ in segs]
    assert starts == [20 * 60, 22 * 60, 2 * 60]
    assert segs[1][4] > 0 and segs[0][4] == 0 and segs[2][4] == 0


def test_small_powers_respect_min_w(tmp_path):
    # 0.5 % short of the target over 7 valley hours would be ~40 W: it runs
    # at min_w instead and finishes sooner
    (r,) = plans(tmp_path, [(CFG, 79.6, T0)])
    w, why, _ = r["req"]
    assert why == "departure_charge" and w == 500
    # an export of a few hundred Wh spread over 3 h would be ~100 W: skipped
    cfg = copy.deepcopy(CFG)
    cfg["departure"]["soc_pct"] = 40
    cfg["battery"]["reserve_pct"] = 40
    (r,) = plans(tmp_path, [(cfg, 40.6, T0 + 18 * 3600)])
    assert any(d > 0 for *_, d, _ in r["segs"])
    assert r["req"][:2] == [0, "plan_idle"]


# T0 is a Thursday, local time (2026-01-01)
THU, FRI, SAT, SUN, MON = (T0 + d * 86400 for d in range(5))


def weekly(schedule, time="07:30"):
    cfg = copy.deepcopy(CFG)
    cfg["departure"]["time"] = time
    cfg["departure"]["schedule"] = schedule
    return cfg


def test_weekly_schedule_picks_each_days_own_time_and_skips_days_off(tmp_path):
    cfg = weekly({"fri": "09:15", "sat": None, "sun": None})
    cases = [(cfg, 50, THU + 20 * 3600),  # Thursday evening -> Friday's own 09:15
             (cfg, 50, FRI + 10 * 3600),  # Friday after it -> Monday (days off skipped), departure.time
             (cfg, 50, SUN + 20 * 3600),  # Sunday evening -> Monday 07:30, 11.5 h away
             (cfg, 50, FRI + 9 * 3600 + 15 * 60)]  # the departure minute itself counts
    r = plans(tmp_path, cases)
    assert [hours_local(x["dep"]) for x in r] == [24 + 9.25, 96 + 7.5, 96 + 7.5, 24 + 9.25]
    # Sunday evening plans for Monday as on any weekday: the valley charge to the target
    sun = r[2]
    assert hours_local(sun["segs"][-1][1]) == 96 + 7.0
    assert soc_path(cfg, 50, sun["segs"])[-1] >= 80
    assert all(imp == 0.31 for _, _, imp, _, c, _, _ in sun["segs"] if c > 0)
    assert sun["req"][1] == "peak_export"  # 20:00 is in the evening peak, as on a weekday


def test_a_departure_days_away_plans_36_hours_without_a_departure_charge(tmp_path):
    cfg = weekly({"sat": None, "sun": None})
    # Friday 09:00 after the departure at the reserve: Monday is 70 h away
    (r,) = plans(tmp_path, [(cfg, 30, FRI + 9 * 3600)])
    segs = r["segs"]
    assert hours_local(r["dep"]) == 96 + 7.5
    assert segs[-1][1] - segs[0][0] == 36 * 3600  # the horizon, not the 70 h
    assert all(why != "departure_charge" for *_, why in segs)
    assert min(soc_path(cfg, 30, segs)) >= 30 - 1e-6
    # the owner is told why nothing happens now (09:00-10:00 is not a valley)
    assert r["req"] == [0, "departure_days_away", None]
    # arbitrage still works: the Friday night valley refills what Saturday's peak exports
    assert any(why == "cheap_charge" for *_, why in segs) and any(d > 0 for *_, d, _ in segs)


def test_no_departure_in_the_week_says_so(tmp_path):
    cfg = weekly({d: None for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")})
    (r,) = plans(tmp_path, [(cfg, 30, THU + 9 * 3600)])
    assert r["dep"] is None
    assert r["segs"][-1][1] - r["segs"][0][0] == 36 * 3600
    assert r["req"] == [0, "no_departure_scheduled", None]



def test_departure_charge_goes_to_the_latest_of_equally_cheap_periods(tmp_path):
    # two night valleys at the same price: the one nearer the departure, so
    # the pack spends less time at high SoC
    cfg = copy.deepcopy(CFG)
    cfg["tariff"]["periods"] = [
        {"start": "01:00", "end": "03:00", "import": 0.2, "export": 0.1},
        {"start": "03:00", "end": "04:00", "import": 0.5, "export": 0.1},
        {"start": "04:00", "end": "06:00", "import": 0.2, "export": 0.1},
        {"start": "06:00", "end": "01:00", "import": 0.5, "export": 0.1}]
    (r,) = plans(tmp_path, [(cfg, 70, T0)])
    charged = {hours_local(t0) % 24: c for t0, _, _, _, c, _, why in r["segs"] if c > 0}
    assert set(charged) == {4.0}, charged  # 6 kWh fit in 04:00-06:00 at 7 kW
    assert soc_path(cfg, 70, r["segs"])[-1] >= 80


def test_daily_v2g_cycle_cap_bounds_each_days_export(tmp_path):
    cfg = copy.deepcopy(CFG)
    cfg["battery"]["v2g_cycles_per_day"] = 0.1  # 6 kWh of the 60 kWh pack a day, battery side
    now = T0 + 8 * 3600  # 08:00, SoC 80: the day's peaks would take much more
    free, capped, late = plans(tmp_path, [(CFG, 80, now), (cfg, 80, now), (cfg, 80, now, 4000 * 0.93)])

    def out_by_day(r):
        days = {}
        for t0, _, _, _, _, d, _ in r["segs"]:
            days[(t0 + 8 * 3600) // 86400] = days.get((t0 + 8 * 3600) // 86400, 0) + d
        return days

    assert sum(out_by_day(free).values()) > 6000 * 2
    assert all(d <= 6000 + 1 for d in out_by_day(capped).values()) and sum(out_by_day(capped).values()) > 5000
    # 3.72 kWh exported already today as 701 counts it (AC): 4 kWh battery side, 2 kWh left today
    today = (now + 8 * 3600) // 86400
    assert out_by_day(late)[today] == pytest.approx(6000 - 4000, abs=2)


def test_local_month_matches_the_calendar_on_both_epochs(tmp_path):
    # v2g.clock.local_month in integers, for unix seconds and the firmware's
    # own epoch (2026-01-01): every month's first and last day of every
    # year to 2099 (leap Februaries among them), either side of midnight,
    # east and west of UTC
    import calendar

    fw_epoch = calendar.timegm((2026, 1, 1, 0, 0, 0))
    cases, want = [], []
    for year in range(1970, 2100):
        for month in range(1, 13):
            last = calendar.monthrange(year, month)[1]
            for day, sec in ((1, 0), (1, 59), (last, 86399), (last, 43200)):
                local = calendar.timegm((year, month, day, 0, 0, 0)) + sec
                for off in (480, -300):
                    t = local - off * 60
                    cases.append([t, off])
                    want.append(month)
                    if t >= fw_epoch:
                        cases.append([t - fw_epoch, off])
                        want.append(month)
    path = tmp_path / "months.json"
    path.write_text(json.dumps(cases))
    got = run_mp("plan_cases", "months", path, heap="16m").json()
    bad = [(c, w, g) for c, w, g in zip(cases, want, got) if w != g]
    assert not bad, bad[:5]


def _with_seasons():
    cfg = copy.deepcopy(CFG)
    cfg["tariff"]["seasons"] = copy.deepcopy(SEASONS)
    return cfg


def test_each_season_plans_with_its_own_periods_and_valley(tmp_path):
    # examples/site.json: 6 August (summer: critical peaks 11-12 and 15-17),
    # 6 January (winter: 18-20) and 6 June (tariff.periods), from 08:00 at
    # 80 % with the departure next morning; the export goes to each day's
    # best-paid hours, and "cheap" is each season's own valley
    cfg = _with_seasons()
    days = {"aug": 1785945600, "jan": 1767628800, "jun": 1781452800}  # 00:00 local (UTC+8)
    res = plans(tmp_path, [(cfg, 80, t + 8 * 3600) for t in days.values()])
    best = {}
    for (name, t), r in zip(days.items(), res):
        segs = r["segs"]
        assert min(soc_path(cfg, 80, segs)) >= 30 - 1e-6
        assert soc_path(cfg, 80, segs)[-1] >= 80
        out = {((t0 - t) // 3600, (t1 - t) // 3600): (exp, d) for t0, t1, _, exp, _, d, _ in segs if d > 0}
        best[name] = max(out, key=lambda k: out[k][1])
        charged = {imp for _, _, imp, _, c, _, _ in segs if c > 0}
        assert charged == {0.31}, (name, charged)
    assert best["aug"] in ((11, 12), (15, 17)) and best["jan"] == (18, 20) and best["jun"] == (18, 21), best


def test_a_period_past_midnight_ends_there_when_the_season_changes(tmp_path):
    # 30 September 22:00 local: the summer's 23:00-07:00 valley stops at
    # midnight, where October (tariff.periods) begins; within a season a
    # wrapping period stays one segment
    cfg = _with_seasons()
    sep30 = 1790697600  # 00:00 local (UTC+8)
    aug30 = sep30 - 31 * 86400
    r_sep, r_aug = plans(tmp_path, [(cfg, 60, sep30 + 22 * 3600), (cfg, 60, aug30 + 22 * 3600)])
    bounds = [((t0 - sep30) / 3600, (t1 - sep30) / 3600) for t0, t1, *_ in r_sep["segs"]][:3]
    assert bounds == [(22, 23), (23, 24), (24, 31)], bounds
    bounds = [((t0 - aug30) / 3600, (t1 - aug30) / 3600) for t0, t1, *_ in r_aug["segs"]][:2]
    assert bounds == [(22, 23), (23, 31)], bounds


def test_a_new_month_in_the_same_season_does_not_cut_the_night(tmp_path):
    # 31 July -> 1 August (both summer) and 28 February -> 1 March (both
    # tariff.periods): the valley stays one segment across midnight
    cfg = _with_seasons()
    jul31, feb28 = 1785427200, 1803744000  # 00:00 local (UTC+8)
    res = plans(tmp_path, [(cfg, 60, jul31 + 22 * 3600), (cfg, 60, feb28 + 22 * 3600)])
    for day, r in zip((jul31, feb28), res):
        bounds = [((t0 - day) / 3600, (t1 - day) / 3600) for t0, t1, *_ in r["segs"]][:2]
        assert bounds == [(22, 23), (23, 31)], (day, bounds)


def test_cheap_is_each_seasons_own_valley(tmp_path):
    # a summer valley at 0.20 and the rest of the year's at 0.31: June's
    # 0.31 night is still its cheap period, so June exports at its evening
    # peak against the night's recharge, and August recharges at 0.20. A
    # plan with one cheapest price for the year (0.20) finds no cheap
    # period in June and exports nothing there
    cfg = _with_seasons()
    for season in cfg["tariff"]["seasons"]:
        if season["name"] == "summer":
            for p in season["periods"]:
                if p["import"] == 0.31:
                    p["import"] = 0.2
    days = {"aug": 1785945600, "jun": 1781452800}  # 00:00 local (UTC+8)
    res = plans(tmp_path, [(cfg, 80, t + 8 * 3600) for t in days.values()])
    for (name, t), r in zip(days.items(), res):
        segs = r["segs"]
        assert soc_path(cfg, 80, segs)[-1] >= 80
        charged = {imp for _, _, imp, _, c, _, _ in segs if c > 0}
        exported = {((t0 - t) // 3600, (t1 - t) // 3600) for t0, t1, _, _, _, d, _ in segs if d > 0}
        assert charged == {"aug": {0.2}, "jun": {0.31}}[name], (name, charged)
        assert exported, (name, segs)
    jun_out = {((t0 - days["jun"]) // 3600, (t1 - days["jun"]) // 3600)
               for t0, t1, _, _, _, d, _ in res[1]["segs"] if d > 0}
    assert (18, 21) in jun_out, jun_out
