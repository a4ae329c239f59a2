"""`make year`: the firmware's own decisions over a simulated year.

The control loop (tools/device/year_loop.py: v2g.control's Controller with
its guard, plan, settings and kernel, on the MicroPython unix port) is
stepped once per simulated minute against the simulator's EV battery, while
the owner drives as tools/year/mobility.py draws it from survey data. Three
runs of the same year, in parallel:
  v2g        the config as given;
  baseline   smart charging only (limits.discharge_w 0: never exports);
  wear_blind the config with battery.wear_cost_per_kwh 0.
From their SoC and power traces: energy, money, the off-peak share, the
owner's departures and unexpected trips, equivalent full cycles and the
capacity fade of a published model (tools/sim/wear.py). Writes
build/year/report.json (CONTRACT section 9) and build/year/year.png.

    build/venv/bin/python -m tools.year [--config FILE] [--days N] [--seed N]
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tools.sim.battery import _CELL_OCV
from tools.sim.wear import MODELS, lfp_fade, nmc_fade
from tools.year.mobility import departure_min_on_raw, sim_day_trips, year_trips

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = ROOT / "build" / "venv" / "bin" / "micropython"
LOOP = ROOT / "tools" / "device" / "year_loop.py"
STEP_S = 60
START = datetime.date(2026, 1, 1)


def _mp(args, **kw):
    env = dict(os.environ, MICROPYPATH=f"{ROOT / 'firmware'}:{ROOT}:.frozen")
    return subprocess.Popen([str(MICROPYTHON), "-X", "heapsize=4M", str(LOOP), *map(str, args)], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def validated(cfg_path):
    """The config as the firmware validates it (exit 2 with its message)."""
    p = _mp([cfg_path, "--config"])
    out, _ = p.communicate()
    if p.returncode != 0:
        # the firmware's own one line naming the key, and its exit status 2
        print(out.strip().splitlines()[-1] if out.strip() else "config error: config: check failed", file=sys.stderr)
        sys.exit(2)
    return json.loads(out.strip().splitlines()[-1])


def variants(raw):
    base = json.loads(json.dumps(raw))
    base["limits"]["discharge_w"] = 0
    blind = json.loads(json.dumps(raw))
    blind["battery"]["wear_cost_per_kwh"] = 0.0
    return {"v2g": raw, "baseline": base, "wear_blind": blind}


def run_year(raw_cfg, cfg, days, seed, out_dir, soc_pct=50.0, progress=print, start=START, trips=None):
    """-> {variant: trace (n, 3) int array}, trips, the loops' totals.
    trips: the owner's trips (default: drawn for the days from the seed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    start_s = int(datetime.datetime(start.year, start.month, start.day, tzinfo=datetime.timezone.utc).timestamp()) \
        - cfg["utc_offset_min"] * 60
    if trips is None:
        trips = year_trips(start, days, cfg["utc_offset_min"], departure_min_on_raw(raw_cfg), seed=seed)
    trips_path = out_dir / "trips.json"
    trips_path.write_text(json.dumps({"start_s": start_s, "days": days, "soc_pct": soc_pct,
                                      "away": [[t["leave_s"], t["back_s"], t["wh"]] for t in trips]}))
    procs = {}
    for name, raw in variants(raw_cfg).items():
        cp = out_dir / f"config_{name}.json"
        cp.write_text(json.dumps(raw))
        procs[name] = _mp([cp, trips_path, out_dir / f"trace_{name}.bin", STEP_S])
    totals = {}
    for name, p in procs.items():
        last = None
        for line in p.stdout:
            line = line.strip()
            if name == "v2g" and line.startswith("month "):
                progress(f"year: {line} of 12")
            last = line or last
        if p.wait() != 0:
            raise RuntimeError(f"year loop ({name}) failed: {last}")
        totals[name] = json.loads(last)
    traces = {name: np.fromfile(out_dir / f"trace_{name}.bin", dtype=np.int32).reshape(-1, 3) for name in procs}
    return traces, trips, start_s, totals


def _day_table(periods):
    imp = np.zeros(1440)
    exp = np.zeros(1440)
    for p in periods:
        s, e = p["start"], p["end"]
        mins = np.arange(s, e) if s < e else np.r_[np.arange(s, 1440), np.arange(0, e)]
        imp[mins] = p["import"]
        exp[mins] = p["export"]
    return imp, exp


def prices(cfg, t_s):
    """Import and export price at each tick (local minute of the day, in
    its month's season: tariff.seasons), and the cheapest import of that
    season (what "off-peak" means that day)."""
    t = cfg["tariff"]
    by_month = t.get("seasons") or [None] * 12  # validated: by month
    local = np.asarray(t_s, dtype=np.int64) + cfg["utc_offset_min"] * 60
    minute = (local // 60) % 1440
    month0 = local.astype("datetime64[s]").astype("datetime64[M]").astype(np.int64) % 12  # January = 0
    imp = np.zeros(len(local))
    exp = np.zeros(len(local))
    cheapest = np.zeros(len(local))
    for k in range(12):
        sel = month0 == k
        if not sel.any():
            continue
        ti, te = _day_table(by_month[k] or t["periods"])
        imp[sel] = ti[minute[sel]]
        exp[sel] = te[minute[sel]]
        cheapest[sel] = ti.min()
    return imp, exp, cheapest


def cell_v(soc):
    s, v = zip(*_CELL_OCV)
    return float(np.interp(soc * 100, s, v))


def measure(cfg, trace, t_s):
    """Energy, money, off-peak share, cycles and fade of one run."""
    soc = trace[:, 0] / 100
    ev_w = trace[:, 1].astype(float)
    h = STEP_S / 3600
    imp, exp, cheapest = prices(cfg, t_s)
    wh_in = np.where(ev_w > 0, ev_w, 0) * h
    wh_out = np.where(ev_w < 0, -ev_w, 0) * h
    cap = cfg["battery"]["capacity_wh"]
    if cfg["battery"]["chemistry"] == "nmc":
        fade, fade_cal, fade_cyc = nmc_fade(t_s, soc / 100, cell_v)
    else:
        fade, fade_cal, fade_cyc = lfp_fade(t_s, soc / 100)
    return {
        "energy_in_wh": float(wh_in.sum()), "energy_out_wh": float(wh_out.sum()),
        "import_cost": float((wh_in * imp).sum() / 1000), "export_revenue": float((wh_out * exp).sum() / 1000),
        "offpeak_charge_share": float(wh_in[imp <= cheapest].sum() / wh_in.sum()) if wh_in.sum() else 1.0,
        "efc_total": float(np.abs(np.diff(soc)).sum() / 2 / 100),
        "capacity_fade_pct": 100 * fade, "fade_calendar_pct": 100 * fade_cal, "fade_cycling_pct": 100 * fade_cyc,
        "wh_in_by_tick": wh_in, "wh_out_by_tick": wh_out, "imp": imp, "exp": exp, "cheapest": cheapest, "cap": cap,
    }


def owner(cfg, trace, trips, start_s):
    """The owner's numbers: departures met, unexpected trips served, SoC
    while plugged in."""
    soc = trace[:, 0] / 100
    ev_w = trace[:, 1]
    plugged = trace[:, 2] == 1
    cap = cfg["battery"]["capacity_wh"]
    want = cfg["departure"]["soc_pct"] - 0.5
    dep_socs = []
    unexpected = served = beyond = 0
    in_range_wh = cap * cfg["battery"]["soc_max_pct"] / 100  # what a full everyday charge holds
    for t in trips:
        i = -(-(t["leave_s"] - start_s) // STEP_S)  # the tick the car left at
        if i >= len(soc):
            continue
        at = soc[max(0, i - 1)]
        if t["kind"] == "departure":
            dep_socs.append(float(at))
        elif t["wh"] > in_range_wh:
            beyond = beyond + 1  # needs charging on the road whatever the home SoC was
        else:
            unexpected += 1
            served += at / 100 * cap >= t["wh"]
    reserve = cfg["battery"]["reserve_pct"]
    # below the reserve while plugged in is allowed only on the way back up:
    # charging, or the first ticks after a return with less
    arrived = np.r_[False, plugged[1:] & ~plugged[:-1]]
    low = plugged & (soc < reserve - 0.5) & (ev_w <= 0) & ~arrived
    return {"departures_total": len(dep_socs), "departures_met": sum(s >= want for s in dep_socs),
            "departure_socs": dep_socs, "unexpected_trips": unexpected, "unexpected_trips_served": int(served),
            "unexpected_trips_beyond_range": beyond,
            "min_soc_pct_plugged": float(soc[plugged].min()) if plugged.any() else None,
            "reserve_broken_ticks": int(low.sum())}


def monthly(m, t_s, cfg, fade_by_month):
    local = t_s + cfg["utc_offset_min"] * 60
    months = np.array([datetime.datetime.fromtimestamp(int(x), datetime.timezone.utc).month for x in local[::1440]])
    month = np.repeat(months, 1440)[:len(t_s)]
    out = []
    for k in range(1, 13):
        sel = month == k
        if not sel.any():
            continue
        wi, wo = m["wh_in_by_tick"][sel], m["wh_out_by_tick"][sel]
        cheap = m["imp"][sel] <= m["cheapest"][sel]
        out.append({"month": k, "energy_in_wh": float(wi.sum()), "energy_out_wh": float(wo.sum()),
                    "owner_net": float((wo * m["exp"][sel]).sum() / 1000 - (wi * m["imp"][sel]).sum() / 1000),
                    "offpeak_charge_share": float(wi[cheap].sum() / wi.sum()) if wi.sum() else 1.0,
                    "capacity_fade_pct": fade_by_month.get(k)})
    return out


def plot(report, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    months = report["months"]
    x = [m["month"] for m in months]
    fig, ax = plt.subplots(2, 2, figsize=(12, 8))
    ax[0][0].bar([v - 0.2 for v in x], [m["energy_in_wh"] / 1000 for m in months], 0.4, label="in (charged)")
    ax[0][0].bar([v + 0.2 for v in x], [m["energy_out_wh"] / 1000 for m in months], 0.4, label="out (exported)")
    ax[0][0].set_title("energy per month, kWh")
    ax[0][0].legend()
    ax[0][1].bar(x, [m["owner_net"] for m in months], color="tab:green")
    ax[0][1].set_title(f"owner's net per month, {report['currency']} (baseline: import only)")
    ax[1][0].plot(x, [m["offpeak_charge_share"] * 100 for m in months], "o-", label="off-peak share of charging, %")
    ax[1][0].axhline(80, color="grey", ls="--", lw=1)
    f = [m["capacity_fade_pct"] for m in months]
    ax2 = ax[1][0].twinx()
    ax2.plot(x, f, "s-", color="tab:red", label="capacity fade, % (cumulative)")
    ax[1][0].set_title("off-peak share (left) and capacity fade (right)")
    ax[1][1].hist(report["departure_socs"], bins=20, color="tab:blue")
    ax[1][1].axvline(report["departure_soc_pct"], color="k", ls="--", lw=1)
    ax[1][1].set_title("SoC at departure, %")
    for a in ax.flat:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "examples" / "site.json"))
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "build" / "year"))
    ap.add_argument("--date", type=datetime.date.fromisoformat, default=START, help="local date of the first day")
    ap.add_argument("--soc", type=float, default=50.0, help="SoC at the start, %%")
    ap.add_argument("--sim-day", action="store_true",
                    help="the trips of make sim's day (one day: the cross-check against make sim)")
    a = ap.parse_args(argv)
    t0 = time.time()
    raw = json.loads(Path(a.config).read_text())
    cfg = validated(a.config)
    out = Path(a.out)
    print(f"year: {a.days} days from {a.date}, one tick per {STEP_S} s, 3 runs (v2g, baseline, wear_blind)", flush=True)
    trips = sim_day_trips(raw, a.date, a.seed) if a.sim_day else None
    traces, trips, start_s, totals = run_year(raw, cfg, a.days, a.seed, out, soc_pct=a.soc, start=a.date,
                                              trips=trips, progress=lambda s: print(s, flush=True))
    n = len(traces["v2g"])
    t_s = start_s + np.arange(n) * STEP_S
    runs = {name: measure(cfg, tr, t_s)
            for name, tr in traces.items()}
    v, b, w = runs["v2g"], runs["baseline"], runs["wear_blind"]
    own = owner(cfg, traces["v2g"], trips, start_s)
    owner_net = v["export_revenue"] - v["import_cost"]
    gain = owner_net + b["import_cost"]
    gain_blind = w["export_revenue"] - w["import_cost"] + b["import_cost"]
    added = v["capacity_fade_pct"] - b["capacity_fade_pct"]
    added_blind = w["capacity_fade_pct"] - b["capacity_fade_pct"]
    per_fade = gain / added if added > 0 else None
    per_fade_blind = gain_blind / added_blind if added_blind > 0 else None
    fade_by_month = {}
    for k in range(1, 13):
        days_in = sum(1 for d in range(a.days) if (a.date + datetime.timedelta(d)).month <= k)
        if days_in:
            sel = slice(0, min(n, days_in * 1440))
            f = measure(cfg, traces["v2g"][sel], t_s[sel])["capacity_fade_pct"]
            fade_by_month[k] = f
    report = {
        "days": a.days, "config": str(a.config), "currency": cfg["tariff"]["currency"], "seed": a.seed,
        "departure_soc_pct": cfg["departure"]["soc_pct"],
        **{k: own[k] for k in ("departures_total", "departures_met", "min_soc_pct_plugged",
                               "unexpected_trips", "unexpected_trips_served", "unexpected_trips_beyond_range",
                               "reserve_broken_ticks")},
        "offpeak_charge_share": v["offpeak_charge_share"],
        "energy_in_wh": v["energy_in_wh"], "energy_out_wh": v["energy_out_wh"],
        "import_cost": v["import_cost"], "export_revenue": v["export_revenue"], "owner_net": owner_net,
        "baseline_import_cost": b["import_cost"], "v2g_gain": gain,
        "efc_total": v["efc_total"], "efc_v2g": v["efc_total"] - b["efc_total"],
        "capacity_fade_pct": v["capacity_fade_pct"], "capacity_fade_pct_baseline": b["capacity_fade_pct"],
        "fade_calendar_pct": v["fade_calendar_pct"], "fade_cycling_pct": v["fade_cycling_pct"],
        "wear_model": {"chemistry": cfg["battery"]["chemistry"], "model": MODELS[cfg["battery"]["chemistry"]]},
        "wear_blind": {"v2g_gain": gain_blind, "capacity_fade_pct": w["capacity_fade_pct"],
                       "energy_out_wh": w["energy_out_wh"]},
        "gain_per_added_fade_pct": per_fade, "gain_per_added_fade_pct_wear_blind": per_fade_blind,
        "gain_per_fade_ratio_vs_wear_blind": (per_fade / per_fade_blind) if per_fade and per_fade_blind else None,
        "trips_km": sum(t["km"] for t in trips),
        "internal_errors": sum(t["internal_errors"] for t in totals.values()),
        "departure_socs": own["departure_socs"],
    }
    report["months"] = monthly(v, t_s, cfg, fade_by_month)
    report["wall_s"] = round(time.time() - t0, 1)
    checks = {
        "departures_met": report["departures_met"] == report["departures_total"],
        "unexpected_trips_served": report["unexpected_trips_served"] == report["unexpected_trips"],
        "reserve_kept_while_plugged": report["reserve_broken_ticks"] == 0,
        "offpeak_share_at_least_0.8": report["offpeak_charge_share"] >= 0.8,
        "no_internal_errors": report["internal_errors"] == 0,
        "under_10_minutes": report["wall_s"] <= 600,
    }
    report["checks"] = checks
    report["ok"] = all(checks.values())
    (out / "report.json").write_text(json.dumps(report, indent=1))
    plot(report, out / "year.png")
    cur = report["currency"]
    print(f"year: departures met {report['departures_met']}/{report['departures_total']}, unexpected trips "
          f"served {report['unexpected_trips_served']}/{report['unexpected_trips']}, lowest SoC plugged in "
          f"{report['min_soc_pct_plugged']:.1f} %")
    print(f"year: charged {v['energy_in_wh'] / 1000:.0f} kWh, exported {v['energy_out_wh'] / 1000:.0f} kWh, "
          f"off-peak share {v['offpeak_charge_share'] * 100:.1f} %")
    print(f"year: owner net {owner_net:.0f} {cur} (baseline import cost {b['import_cost']:.0f} {cur}): "
          f"V2G gain {gain:.0f} {cur}")
    print(f"year: fade {v['capacity_fade_pct']:.3f} % ({report['wear_model']['chemistry']}), "
          f"{b['capacity_fade_pct']:.3f} % without export, {w['capacity_fade_pct']:.3f} % wear-blind; EFC {v['efc_total']:.0f} ({report['efc_v2g']:.0f} "
          f"from V2G); {cur} per % of added fade {per_fade and round(per_fade)} vs "
          f"{per_fade_blind and round(per_fade_blind)} wear-blind")
    print(f"year: wrote {out / 'report.json'} and {out / 'year.png'} in {report['wall_s']} s; "
          + ("all checks pass" if report["ok"] else "FAILED: " + ", ".join(k for k, ok in checks.items() if not ok)))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
