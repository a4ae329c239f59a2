"""Technician helpers through `mpremote ... resume exec` on the unix port
presented as a board by tools/pty_bridge.py, with the firmware running
(main.py) against the SunSpec simulator and Mosquitto."""
import json
import shutil
import subprocess
import sys
import time

import pytest

from conftest import MP, ROOT, site_config
from tools.build_mpy import build
from tools.cloud_client import Cloud, command

MPREMOTE = str(ROOT / "build" / "venv" / "bin" / "mpremote")
DEV = "home-charger-01"


class Board:
    """A scratch root with the shipped build, run behind the pty bridge."""

    def __init__(self, tmp_path, inv_port, broker_port):
        self.root = tmp_path / "board"
        build("x64", self.root)
        shutil.copytree(ROOT / "board_configs", self.root / "board_configs")
        _, cfg = site_config(tmp_path, inv_port, broker_port)
        cfg["store"]["dir"] = "data"
        self.cfg = cfg
        (self.root / "config.json").write_text(json.dumps(cfg))
        self.bridge = subprocess.Popen([sys.executable, "-m", "tools.pty_bridge", "--root", str(self.root)],
                                       cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.bridge.stdout.readline()
        assert line.startswith("READY port="), line
        self.port = line.split("=", 1)[1].strip()
        self.outputs = []

    def exec(self, code, timeout=30):
        return self._mpremote("exec", code, timeout=timeout)

    def run(self, name, timeout=30):
        """The program host_tests/mp/<name>.py, run on the board."""
        return self._mpremote("run", str(MP / f"{name}.py"), timeout=timeout)

    def _mpremote(self, *args, timeout):
        r = subprocess.run([MPREMOTE, "connect", self.port, "resume", *args],
                           capture_output=True, text=True, timeout=timeout)
        self.outputs.append(r.stdout + r.stderr)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    def close(self):
        self.bridge.terminate()
        self.bridge.wait(10)


@pytest.fixture
def board(tmp_path, broker, live_inverter):
    b = broker()
    inv = live_inverter(soc_pct=50, ramp_w_per_s=1e6)
    cloud = Cloud("127.0.0.1", b.port, DEV)
    bd = Board(tmp_path, inv.port, b.port)
    bd.inv, bd.cloud, bd.broker = inv, cloud, b
    # up and reporting before the technician arrives
    assert cloud.wait(lambda c: b"online" in c.topic("status") and c.json("state"), timeout=20)
    yield bd
    bd.close()
    cloud.close()
    everything = "".join(bd.outputs)
    for secret in (bd.cfg["command_key"], bd.cfg["command_key"].upper()):
        assert secret not in everything, "a secret reached the console"


def test_status_one_screen(board):
    out = board.exec("import tech; tech.status()")
    for words in ("home-charger-01", "mode ", "SoC 50.0 %", "reserve 30.0 %", "ev_w", "setpoint", "window",
                  "charge 7000 W", "inverter  ok", "cloud ", "outbox", "ticks of 200 ms", "faults    none"):
        assert words in out, (words, out)
    assert len(out.splitlines()) <= 16  # one screen


def test_read_points_by_name_with_units(board):
    out = board.exec("import tech; tech.read('713.SoC'); tech.read('701.Hz'); tech.read('704.WSetRvrtTms')")
    assert "713.SoC = 50.0 %" in out
    assert "701.Hz = 49.9" in out or "701.Hz = 50.0" in out
    assert "704.WSetRvrtTms = 10 s" in out
    out = board.run("tech_read_unknown")
    assert "refused unknown point 999.X" in out


def test_pause_resume_and_clear_fault(board):
    out = board.exec("import tech, time; tech.pause(); time.sleep_ms(500); tech.status()")
    assert "paused" in out and "mode      hold" in out and "setpoint +0 W" in out
    assert board.inv.inv.map.get(704, "WSet") == 0
    out = board.exec("import tech, time; tech.resume(); time.sleep_ms(600); tech.status()")
    assert "resumed" in out and "mode      hold" not in out
    board.inv.call(board.inv.inv.inject_fault, "OVER_TEMP")
    time.sleep(0.6)
    out = board.exec("import tech; tech.status(); tech.clear_fault(); tech.faults()")
    assert "FAULT inverter_alarm:OVER_TEMP" in out
    assert "still reported by the inverter: inverter_alarm:OVER_TEMP" in out
    assert "raised  inverter_alarm:OVER_TEMP" in out
    board.inv.call(board.inv.inv.clear_fault)
    time.sleep(0.4)
    out = board.exec("import tech; tech.clear_fault(); tech.faults()")
    assert "cleared: inverter_alarm:OVER_TEMP" in out and "cleared inverter_alarm:OVER_TEMP" in out


def test_selftest(board):
    out = board.exec("import tech; print('ALL', tech.selftest())")
    for name in ("inverter", "cloud", "config", "clock", "storage", "heap"):
        assert f"{name:8s} PASS" in out, out
    assert "ALL True" in out
    board.broker.stop()  # the cloud check really talks to the broker
    out = board.exec("import tech; print('ALL', tech.selftest())")
    assert "cloud    FAIL" in out and "ALL False" in out


def test_config_change_and_factory_reset_keep_totals_and_seq(board):
    c = board.cloud
    key = board.cfg["command_key"]
    now = int(time.time())
    # energy must flow whatever the hour the test runs at (the plan may be idle)
    c.send(command(key, "set_mode", {"mode": "charge_now"}, 45, now + 600, "m1"))
    assert c.result("m1")["ok"] is True
    c.send(command(key, "set_reserve", {"pct": 42}, 50, now + 600, "r42"))
    assert c.result("r42")["ok"] is True
    assert c.wait(lambda cl: [s for s in cl.json("state") if s["reserve_pct"] == 42.0])
    time.sleep(2)
    tele_before = max(r["seq"] for r in c.json("telemetry")) if c.json("telemetry") else 0
    wh_before = board.inv.inv.wh_abs
    assert wh_before > 0
    # a bad change is refused and changes nothing
    out = board.exec("import tech; tech.config('battery.reserve_pct', 95)")
    assert "not saved: battery.soc_max_pct: must be >= battery.reserve_pct" in out
    out = board.exec("import tech; tech.config('departure.soc_pct', 85); tech.factory_reset()")
    assert "saved departure.soc_pct" in out and "run-time settings cleared" in out
    saved = json.loads((board.root / "config.json").read_text())
    assert saved["departure"]["soc_pct"] == 85 and (board.root / "config.json.bak").exists()
    shown = board.exec("import tech; tech.config()")
    assert '"command_key": "***"' in shown
    n_online = c.topic("status").count(b"online")
    board.exec("import tech; tech.restart()")
    assert c.wait(lambda cl: cl.topic("status").count(b"online") > n_online, timeout=20)
    # back with the factory reserve, the new departure, the same seqs and totals
    st = c.wait(lambda cl: [s for s in cl.json("state") if s["reserve_pct"] == 30.0], timeout=15)
    assert st
    c.send(command(key, "set_reserve", {"pct": 35}, 50, int(time.time()) + 600, "again"))
    assert c.result("again")["error"] == "replay"
    tele = c.wait(lambda cl: [r for r in cl.json("telemetry") if r["seq"] > tele_before], timeout=20)
    assert tele and tele[-1]["wh_in"] >= int(wh_before)
    # (the REPL stops the cloud link: console checks come last)
    out = board.exec("import tech; tech.status()")
    assert "departure 07:30 at 85.0 %" in out
