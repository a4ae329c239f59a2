"""`make bench` threads: the concurrency soak of issue 11 for 2 minutes.

The real control loop runs in its thread (50 ms period) while a cloud-like
thread and two REPL-helper threads read the status record and post into the
inbox as fast as they can (tools/device/soak_threads.py). Every snapshot is
checked: its fields come from one tick, mode and reason fit the guard's
state. Figures: the violations (0), the snapshots checked per tick, the
actions applied against those offered, and the ticks against the period.
"""
import json
import subprocess
import tempfile
from pathlib import Path

from tools.harness import MICROPYTHON, ROOT, mp_env, site_config

SOAK_S = 120
PERIOD_MS = 50


def run(results, seconds=SOAK_S):
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path, _ = site_config(Path(tmp), 1502, 1883, control__period_ms=PERIOD_MS)
        res = subprocess.run([MICROPYTHON, str(ROOT / "tools" / "device" / "soak_threads.py"), str(cfg_path),
                              str(seconds)], capture_output=True, text=True, env=mp_env(), cwd=str(ROOT),
                             timeout=seconds + 120)
    if res.returncode != 0:
        raise RuntimeError(f"soak failed:\n{res.stdout}\n{res.stderr}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    c = out["counts"]
    ticks = out["ticks"]
    results["threads_soak_s"] = seconds
    results["threads_violations"] = len(out["bad"]) + c["exceptions"]
    results["threads_snapshots_checked"] = c["snapshots"]
    results["threads_snapshots_per_tick"] = round(c["snapshots"] / max(1, ticks), 1)
    results["threads_ticks_vs_period"] = round(ticks / (seconds * 1000 / PERIOD_MS), 3)
    results["threads_actions_offered"] = out["offered"]
    results["threads_actions_unapplied"] = out["offered"] - out["applied"]
    results["threads_replies_missing"] = c["asked"] - c["answered"]
    results["threads_stopped_cleanly"] = int(out["control_returned"] and out["stopped"])
    if out["bad"]:
        print("  first violations:", json.dumps(out["bad"][:3])[:2000])
