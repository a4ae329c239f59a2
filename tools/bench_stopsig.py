"""`make bench` stopsig: why the firmware reads SIGINT/SIGTERM as pending
instead of taking them in the unix port's handler (firmware/v2g/hal/
stopsig.py). Two allocating threads (tools/device/stop_stress.py) are
stopped by SIGINT at a random moment, RUNS times each way; a run is clean
when both threads stop and a last collection goes through within 10 s.

    stopsig_runs                     runs each way
    stopsig_failed_handler           the port's handler: errors ("heap is locked"), hangs
    stopsig_failed_polled            blocked at start and polled (the firmware's way)
"""
import random
import signal
import subprocess
import time

from tools import children
from tools.harness import MICROPYTHON, ROOT, mp_env

RUNS = 40


def _once(mode):
    proc = subprocess.Popen([MICROPYTHON, str(ROOT / "tools" / "device" / "stop_stress.py"), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=mp_env(),
                            cwd=str(ROOT), preexec_fn=children.block_stop_signals if mode == "poll" else None)
    try:
        if proc.stdout.readline() != "ready\n":
            return False
        time.sleep(random.uniform(0.05, 0.3))
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=10)
        return proc.returncode == 0 and out.strip().endswith("clean")
    except subprocess.TimeoutExpired:
        return False  # hung
    finally:
        children.end(proc, signal.SIGKILL, timeout=5)


def run(results, runs=RUNS):
    results["stopsig_runs"] = runs
    for mode, key in (("handler", "stopsig_failed_handler"), ("poll", "stopsig_failed_polled")):
        results[key] = sum(0 if _once(mode) else 1 for _ in range(runs))
