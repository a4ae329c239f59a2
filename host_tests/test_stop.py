"""Stopping means 0 W: `make run`'s launcher (tools/run_unix.py) stopped the
ways a user and a service manager stop it, while the firmware exports on a
cloud dispatch. The inverter (SunSpec simulator) must read 0 W within one
control period of the signal, the cloud must see `offline`, exit 0."""
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, site_config
from test_cloud import DEV, EVENING_MS, KEY
from tools.cloud_client import Cloud, command

PERIOD_S = 0.2  # control.period_ms default


def _last_nonzero_then_zero(inv, t_sig):
    """(sim time of the first 0 W write of WSet after t_sig, the writes after t_sig)."""
    after = [(t, w) for t, w in list(inv.writes) if t >= t_sig]
    zero = next((t for t, w in after if w == 0), None)
    return zero, after


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm_group", "sigint_twice"])
def test_stop_during_export_writes_0w_within_one_period(tmp_path, broker, live_inverter, how):
    b = broker()
    inv = live_inverter(warp=1.0, sim_epoch=EVENING_MS / 1000, soc_pct=70, ramp_w_per_s=1e6)
    cfg_path, _ = site_config(tmp_path, inv.port, b.port)
    cloud = Cloud("127.0.0.1", b.port, DEV)
    env = dict(os.environ, V2G_CLOCK=inv.clock.to_env())
    # its own session: the process group a terminal's Ctrl-C or `timeout`
    # signals, as for `make run` in a shell
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "run_unix.py"), str(cfg_path)],
                            env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert cloud.wait(lambda c: b"online" in c.topic("status"), timeout=20)
        now = int(inv.clock.now())
        cloud.send(command(KEY, "dispatch", {"ev_w": -4000, "until": now + 1800}, 1, now + 600, "x1"))
        assert cloud.result("x1")["ok"]
        deadline = time.time() + 10
        while not (inv.inv.writes and inv.inv.writes[-1][1] == 4000):  # WSet: grid sign
            assert time.time() < deadline, "no export started"
            time.sleep(0.05)
        time.sleep(0.5)  # exporting for a few ticks
        assert inv.inv.ev_w < -3000
        t_sig = inv.clock.now()
        if how == "ctrl_c":
            os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the foreground group
        elif how == "sigterm_group":
            os.killpg(proc.pid, signal.SIGTERM)  # timeout(1), systemd
        else:
            os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)  # an impatient second Ctrl-C
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0, out
        zero_t, after = _last_nonzero_then_zero(inv.inv, t_sig)
        assert zero_t is not None, f"no 0 W written after the signal: {after}"
        assert zero_t - t_sig <= PERIOD_S + 0.1, f"0 W came {zero_t - t_sig:.3f} s after the signal"
        assert after[-1][1] == 0, after  # nothing but 0 W after it
        assert cloud.wait(lambda c: c.topic("status")[-1:] == [b"offline"], timeout=5)
        st = cloud.json("state")[-1]
        assert st["setpoint_w"] == 0 and st["reason"] == "stopped", st
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        cloud.close()
