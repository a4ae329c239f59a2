"""Soak: shortened simulated days (`make sim`) back to back, with CPU hogs
and a disk writer beside them, so the real-time stalls a loaded machine
brings show up.

At x1000 every wall-clock stall of the inverter simulator or the firmware is
1000 times longer in simulated time, and the inverter's reversion window is
only 0.2 s of wall time (tools/sim/day.py), the setpoint refreshed every third
of it. The disk writer stands for the write-back after the set-up's install
(or another job's I/O): behind its journal commits a rename or an append on
the same disk blocks for 0.1-0.2 s, which is what made the day fail. What
counts is that no day fails a check and how close the worst setpoint-refresh
gap came to the window:

    soak_days, soak_hogs, soak_io_hogs, soak_hours_per_day, soak_warp
    soak_failed_checks               failed day checks summed over the days (0)
    soak_failed_days
    soak_worst_refresh_gap_s         simulated s between two 704 WSet refreshes
    soak_worst_refresh_gap_vs_revert that gap / the reversion window (< 1)
    soak_worst_refresh_gap_real_ms   the worst gap in wall time
    soak_revert_window_s             the window (704 WSetRvrtTms, simulated s)

    python -m tools.bench_soak [--days 10] [--hours 8] [--wall-s 16] [--hogs N] [--io-hogs 1]
    python -m tools.bench soak       the same defaults, or SOAK_DAYS, SOAK_HOURS,
                                     SOAK_WALL_S, SOAK_HOGS, SOAK_IO_HOGS from the environment
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tools import children

ROOT = Path(__file__).resolve().parent.parent
VENV_PY = ROOT / "build" / "venv" / "bin" / "python"
OUT = ROOT / "build" / "bench" / "soak"

# 8 h from midnight hold the night's charging and the 07:30 departure, so
# every check of the day applies; in 16 s (x1800) ten days take ~4 minutes.
DAYS, HOURS, WALL_S = 10, 8.0, 16.0


def cpu_hog():
    """Spins forever (`--cpu-hog`)."""
    while True:
        pass


def io_hog(path):
    """256 MB to `path` on the build directory's disk, flushed (fsync:
    write-back and a journal commit), removed, again (`--io-hog PATH`);
    only ever one such file per hog."""
    mb = b"\0" * (1 << 20)
    while True:
        with open(path, "wb") as f:
            for _ in range(256):
                f.write(mb)
            f.flush()
            os.fsync(f.fileno())
        os.unlink(path)


def _env(name, default, kind):
    v = os.environ.get(name)
    return default if v in (None, "") else kind(v)


def day(out, hours, wall_s):
    """One shortened `make sim` day -> its report (None if it wrote none)."""
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.json"
    report.unlink(missing_ok=True)
    with open(out / "sim.out", "w") as log:
        proc = children.spawn([str(VENV_PY), "-m", "tools.sim", "--hours", str(hours), "--wall-s", str(wall_s),
                               "--quiet", "--out", str(out)], stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        try:
            proc.wait(timeout=wall_s * 3 + 120)
        except subprocess.TimeoutExpired:
            pass
        finally:
            children.end(proc)
    try:
        return json.loads(report.read_text())
    except (OSError, ValueError):
        return None


def run(results, days=None, hours=None, wall_s=None, hogs=None, io_hogs=None):
    days = days if days is not None else _env("SOAK_DAYS", DAYS, int)
    hours = hours if hours is not None else _env("SOAK_HOURS", HOURS, float)
    wall_s = wall_s if wall_s is not None else _env("SOAK_WALL_S", WALL_S, float)
    # one per core: the simulator's processes never get an idle core
    hogs = hogs if hogs is not None else _env("SOAK_HOGS", os.cpu_count() or 1, int)
    io_hogs = io_hogs if io_hogs is not None else _env("SOAK_IO_HOGS", 1, int)
    failed_checks = failed_days = 0
    gap_s = gap_ratio = gap_real_ms = window_s = None
    started = []
    io_files = [OUT / f"io-hog-{i}.bin" for i in range(io_hogs)]
    t0 = time.monotonic()
    try:
        OUT.mkdir(parents=True, exist_ok=True)
        for _ in range(hogs):
            started.append(children.spawn([sys.executable, "-m", "tools.bench_soak", "--cpu-hog"], cwd=str(ROOT)))
        for path in io_files:
            started.append(children.spawn([sys.executable, "-m", "tools.bench_soak", "--io-hog", str(path)],
                                          cwd=str(ROOT)))
        for i in range(days):
            rep = day(OUT / f"day{i + 1:02d}", hours, wall_s)
            if rep is None:
                failed_checks += 1  # no report: nothing it should have shown holds
                failed_days += 1
                print(f"  day {i + 1:2d}: no report (see {OUT / f'day{i + 1:02d}' / 'sim.out'})", flush=True)
                continue
            bad = sorted(k for k, ok in rep["checks"].items() if not ok)
            failed_checks += len(bad)
            failed_days += bool(bad)
            if rep.get("setpoint_gap_vs_revert") is not None:
                if gap_ratio is None or rep["setpoint_gap_vs_revert"] > gap_ratio:
                    gap_ratio = rep["setpoint_gap_vs_revert"]
                    gap_s = rep["max_setpoint_gap_s"]
                    window_s = rep["revert_window_s"]
                if gap_real_ms is None or rep["max_setpoint_gap_real_ms"] > gap_real_ms:
                    gap_real_ms = rep["max_setpoint_gap_real_ms"]
            print(f"  day {i + 1:2d}: {'ok' if not bad else 'FAILED ' + ', '.join(bad)}; worst refresh gap "
                  f"{rep.get('max_setpoint_gap_s')} s of {rep.get('revert_window_s')} s "
                  f"({rep.get('max_setpoint_gap_real_ms')} ms wall); faults {rep.get('faults')}", flush=True)
    finally:
        for p in started:
            children.end(p)
        for path in io_files:
            path.unlink(missing_ok=True)
    results.update({
        "soak_days": days,
        "soak_hogs": hogs,
        "soak_io_hogs": io_hogs,
        "soak_hours_per_day": hours,
        "soak_warp": round(hours * 3600 / wall_s),
        "soak_wall_s": round(time.monotonic() - t0, 1),
        "soak_failed_checks": failed_checks,
        "soak_failed_days": failed_days,
        "soak_worst_refresh_gap_s": gap_s,
        "soak_worst_refresh_gap_vs_revert": gap_ratio,
        "soak_worst_refresh_gap_real_ms": gap_real_ms,
        "soak_revert_window_s": window_s,
    })


def main(argv=None):
    children.exit_on_signals()  # SIGTERM ends the hogs and the day too (tools/children.py)
    p = argparse.ArgumentParser(prog="python -m tools.bench_soak", description=__doc__.split("\n")[0])
    p.add_argument("--days", type=int, default=None, help=f"days back to back (default {DAYS})")
    p.add_argument("--hours", type=float, default=None, help=f"simulated hours per day (default {HOURS:g})")
    p.add_argument("--wall-s", type=float, default=None, help=f"wall seconds per day (default {WALL_S:g})")
    p.add_argument("--hogs", type=int, default=None, help="CPU hog processes beside them (default one per core)")
    p.add_argument("--io-hogs", type=int, default=None, help="disk writers beside them (default 1)")
    p.add_argument("--cpu-hog", action="store_true", help=argparse.SUPPRESS)  # one hog's process
    p.add_argument("--io-hog", metavar="PATH", help=argparse.SUPPRESS)  # one disk writer's process
    a = p.parse_args(argv)
    if a.cpu_hog:
        cpu_hog()
    if a.io_hog:
        io_hog(a.io_hog)
    results = {}
    run(results, a.days, a.hours, a.wall_s, a.hogs, a.io_hogs)
    print(json.dumps(results, indent=2))
    return 0 if results["soak_failed_checks"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
