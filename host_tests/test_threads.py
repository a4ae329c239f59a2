"""Ownership between the threads: the control loop publishes one status
record per tick and takes actions only through its inbox; a soak with the
cloud-like and REPL-helper threads hammering both checks every snapshot.
(The 2-minute version runs in `make bench`: tools/bench.py threads.)"""
import json
import re
import subprocess

from conftest import ROOT, MICROPYTHON, mp_env
from tools.harness import site_config

SOAK = ROOT / "tools" / "device" / "soak_threads.py"


def soak(tmp_path, seconds):
    cfg_path, _ = site_config(tmp_path, 1502, 1883, control__period_ms=50)
    res = subprocess.run([MICROPYTHON, str(SOAK), str(cfg_path), str(seconds)], capture_output=True, text=True,
                         env=mp_env(), cwd=ROOT, timeout=seconds + 60)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_a_short_soak_finds_every_snapshot_whole_and_every_action_applied(tmp_path):
    out = soak(tmp_path, 8)
    assert out["bad"] == [], out["bad"]
    c = out["counts"]
    assert c["exceptions"] == 0
    assert out["ticks"] >= 8 * 1000 / 50 * 0.8, out  # the loop kept its period under the load
    assert c["snapshots"] > 10 * out["ticks"], c  # many reads per tick: a torn one would show
    assert c["absent"] > 0, c  # the car went away (15 % of the ticks) and the records said so
    assert c["asked"] > 50 and c["answered"] >= c["asked"] - 2, c
    assert c["posted"] > 50 and out["dropped"] == 0
    # everything queued was applied, but for what the posters sent after the last tick
    assert out["offered_before_stop"] <= out["applied"] <= out["offered"], out
    assert out["internal_errors"] == 0
    # the stop went through the inbox and the loop returned by itself
    assert out["control_returned"] and out["stopped"] and (out["mode"], out["reason"]) == ("idle", "stopped")


def test_other_threads_reach_the_controller_only_through_its_shared_port():
    # cloud.py, commands.py and tech.py never name the objects the control
    # thread owns (the Controller, its guard, plan, settings, inverter or car)
    owned = re.compile(r"\bctrl\b|\.(guard|plan|inv|vehicle|south|meas)\b")
    for name in ("cloud.py", "commands.py", "tech.py"):
        text = (ROOT / "firmware" / "v2g" / name).read_text()
        code = "\n".join(line.split("#")[0] for line in text.splitlines())
        hits = [m.group(0) for m in owned.finditer(code)]
        # tech.py may name cfg["vehicle"] (the config), not the session
        hits = [h for h in hits if h != ".vehicle" or name != "tech.py"]
        assert not hits, (name, hits)


def test_the_control_thread_never_imports_after_boot():
    # an import writes sys.modules, a dict the other core may be reading
    # (the RP2040 port has no GIL): the modules the control loop runs
    # import everything at the top, when boot loads them; code the REPL
    # wants run there comes with its action (tech.read -> read_point)
    late = re.compile(r"^[ \t]+(import \w|from [\w.]+ import )", re.M)
    for name in ("control.py", "guard.py", "plan.py", "settings.py", "meas.py", "southbound.py", "shared.py",
                 "kernel.py", "sunspec.py", "modbus.py", "chademo.py", "vehicle.py", "log.py"):
        text = (ROOT / "firmware" / "v2g" / name).read_text()
        hits = [m.group(0).strip() for m in late.finditer(text)]
        assert not hits, (name, hits)
