"""The control loop on the unix port against a live simulated inverter:
link loss, garbage, timeouts and inverter faults, tick by tick."""
import json
import subprocess
import time

import pytest

from conftest import ROOT, MICROPYTHON, mp_env, site_config

# 2026-06-15 02:00 local (UTC+8): the valley, charging for the 07:30 departure
SIM_START_MS = (1781452800 + 2 * 3600) * 1000


class Harness:
    def __init__(self, tmp_path, port, **overrides):
        # the harness builds only the controller: the broker port is unused
        p, _ = site_config(tmp_path, port, 1883, inverter__timeout_ms=50, **overrides)
        env = mp_env({"V2G_CLOCK": f"1,{int(time.time() * 1000)},{SIM_START_MS}"})
        self.proc = subprocess.Popen(
            [MICROPYTHON, str(ROOT / "host_tests" / "mp" / "control_harness.py"), str(p), str(ROOT / "board_configs")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        assert self._line() == {"ready": True}

    def _line(self):
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError("harness died, rc=%s" % self.proc.wait())
        return json.loads(line)

    def tick(self, n=1):
        self.proc.stdin.write(f"tick {n}\n")
        self.proc.stdin.flush()
        return [self._line() for _ in range(n)]

    def cmd(self, name, *args):
        self.proc.stdin.write("cmd " + " ".join([name, *map(str, args)]) + "\n")
        self.proc.stdin.flush()
        return self._line()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        assert self.proc.returncode == 0


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(port, **kw):
        h = Harness(tmp_path, port, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def until(rows, pred):
    for i, r in enumerate(rows):
        if pred(r):
            return i
    return None


def test_runs_and_charges_for_departure(live_inverter, harness):
    li = live_inverter(soc_pct=50, ramp_w_per_s=1e6)
    h = harness(li.port)
    rows = h.tick(15)
    assert rows[0]["mode"] == "hold" or rows[0]["mode"] == "charge"
    assert rows[-1]["mode"] == "charge" and rows[-1]["reason"] == "departure_charge"
    # 200 W per tick ramp (1000 W/s at 200 ms)
    sps = [r["sp"] for r in rows if r["sp"] > 0]
    assert all(b - a <= 200 for a, b in zip(sps, sps[1:]))
    assert li.inv.ev_w > 0
    # the period is kept: 15 ticks take ~3 s
    assert all(r["ms"] <= 260 for r in rows[2:])


def test_inverter_disappears_then_returns(live_inverter, harness):
    li = live_inverter(soc_pct=50)
    h = harness(li.port)
    rows = h.tick(10)
    assert rows[-1]["mode"] == "charge"
    port = li.port
    li.stop()
    rows = h.tick(4)
    i = until(rows, lambda r: r["mode"] == "fault")
    assert i is not None and i < 3, rows  # fault within 3 periods
    assert rows[i]["reason"] == "link_lost" and rows[i]["fault"] == "link_lost" and rows[i]["sp"] == 0
    rows = h.tick(3)
    assert all(r["mode"] == "fault" for r in rows)
    li.start(port)
    rows = h.tick(12)
    j = until(rows, lambda r: r["mode"] == "charge")
    assert j is not None and j <= 7, rows  # rediscovery at ~1 Hz, then back by itself
    assert rows[-1]["fault"] is None


def test_garbage_within_retries_is_absorbed(live_inverter, harness):
    li = live_inverter()
    h = harness(li.port)
    h.tick(8)
    li.inv.corrupt_responses(2)  # retries=2: the third attempt succeeds
    rows = h.tick(4)
    assert all(r["mode"] == "charge" for r in rows), rows
    assert rows[-1]["errors"] == 0


def test_sustained_garbage_faults_then_recovers(live_inverter, harness):
    li = live_inverter()
    h = harness(li.port)
    h.tick(8)
    li.inv.corrupt_responses(12)
    rows = h.tick(20)
    i = until(rows, lambda r: r["mode"] == "fault")
    assert i == 0 and rows[i]["reason"] == "link_lost"
    assert rows[-1]["mode"] == "charge" and rows[-1]["fault"] is None


def test_silent_inverter_faults_with_bounded_stall(live_inverter, harness):
    li = live_inverter()
    h = harness(li.port)
    h.tick(8)
    li.inv.drop_requests(10)
    rows = h.tick(6)
    assert rows[0]["mode"] == "fault"
    # a dead link costs at most one transaction's retries: 3 x (50 ms + frame time)
    assert max(r["ms"] for r in rows) < 450


def test_busy_answer_is_retried(live_inverter, harness):
    li = live_inverter()
    h = harness(li.port)
    h.tick(8)
    li.inv.busy_responses(1)
    rows = h.tick(3)
    assert all(r["mode"] == "charge" for r in rows)


def test_inverter_fault_latches_until_cleared(live_inverter, harness):
    li = live_inverter()
    h = harness(li.port)
    h.tick(8)
    li.call(li.inv.inject_fault, "GROUND_FAULT")
    rows = h.tick(2)
    assert rows[0]["mode"] == "fault" and rows[0]["fault"] == "inverter_alarm:GROUND_FAULT"
    assert rows[0]["sp"] == 0
    li.call(li.inv.clear_fault)
    rows = h.tick(3)
    assert all(r["mode"] == "fault" for r in rows)  # latched
    assert h.cmd("clear_fault")["ret"] is True
    rows = h.tick(3)
    assert rows[-1]["mode"] == "charge" and rows[-1]["fault"] is None


def test_pause_holds_and_resume_continues(live_inverter, harness):
    li = live_inverter()
    h = harness(li.port)
    h.tick(8)
    h.cmd("pause")
    rows = h.tick(2)
    assert rows[0]["mode"] == "hold" and rows[0]["reason"] == "paused" and rows[0]["sp"] == 0
    h.cmd("resume")
    assert h.tick(2)[-1]["mode"] == "charge"


def test_damaged_settings_are_skipped_not_fatal(mpy, tmp_path):
    """A settings.json with values of the wrong shape (damaged flash) must
    not stop the firmware from starting: each bad key is skipped with an event."""
    res = mpy("""
import json
from v2g import config, log
from v2g.clock import Clock
from v2g.control import Controller
log.quiet = True
class NoInverter:
    ready = False
    inverter_droop = False
cfg = config.load('examples/site.json')
c = Controller(cfg, Clock(), NoInverter())
c.apply_settings({"reserve_pct": "lots", "departure": [450], "mode": "turbo", "dispatch": None})
c.apply_settings({"reserve_pct": 40, "mode": "idle"})
print(json.dumps([[e["key"] for e in c.events.take()], c.reserve_pct(), c.user_mode]))
""")
    keys, reserve, mode = res.json()
    assert sorted(keys) == ["departure", "dispatch", "mode", "reserve_pct"]
    assert reserve == 40 and mode == "idle"
