"""The control loop on the unix port against a live simulated inverter:
link loss, garbage, timeouts and inverter faults, tick by tick."""
import json
import subprocess
import time

import pytest

from conftest import ROOT, MICROPYTHON, mp_env, run_mp, site_config

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


def test_damaged_settings_are_skipped_not_fatal():
    """A settings.json with values of the wrong shape (damaged flash) must
    not stop the firmware from starting: each bad key is skipped with an event."""
    res = run_mp("control_cases", "damaged_settings")
    keys, reserve, mode = res.json()
    assert sorted(keys) == ["departure", "dispatch", "mode", "reserve_pct"]
    assert reserve == 40 and mode == "idle"


def test_an_error_while_handling_an_internal_error_does_not_end_the_control_thread():
    # A full heap makes the tick raise, and the 0 W write of its handling
    # raise the same: the loop counts it and keeps ticking (before, that
    # second MemoryError escaped the handler and the control thread died,
    # found by the ROMFS heap search)
    got = run_mp("control_cases", "internal_error_while_zeroing").json()
    assert got == {"ticks": 5, "internal_errors": 5, "setpoint_w": 0, "events": 5}, got


def test_telemetry_ring_leaves_no_garbage_in_the_control_thread_and_keeps_order():
    # The control thread hands samples to the cloud thread through a ring of
    # ints allocated once: put() leaves no garbage (heap use is the same
    # after 1,000 samples; the call's own frame is freed on return), None
    # survives the round trip, units become CONTRACT units on the way
    # out (ts: seconds since the firmware's epoch in, unix s out; None
    # while the clock is not set), and when full the oldest go and are counted.
    out = run_mp("control_cases", "telemetry_ring")
    got = json.loads(out.lines()[-2])
    assert got["grown"] == 0
    assert got["dropped"] == 2
    assert [r["ts"] for r in got["recs"]] == [1781452802, 1781452803, 1781452804, 1781452805]
    first = got["recs"][0]
    assert first == {"ts": 1781452802, "soc_pct": 45.14, "ev_w": -3002, "grid_hz": 50.012, "wh_in": 1002, "wh_out": 7}
    assert got["recs"][-1]["wh_in"] is None
    assert json.loads(out.lines()[-1]) == {"ts": None, "soc_pct": None, "ev_w": None, "grid_hz": None,
                                          "wh_in": None, "wh_out": None}


@pytest.mark.parametrize("seed", [1, 2])
def test_tick_stats_are_the_order_statistics_of_the_last_ticks_and_copy_nothing(seed):
    # counted in place (no 1 KB copy to sort, the allocation that failed in
    # a fragmented heap): the same values a sort of the last 256 gives
    got = run_mp("control_cases", "tick_stats", seed).json()
    last = sorted(max(-(2**29 - 1), min(2**29 - 1, d)) for d in got["delays"][-256:])
    n = len(last)
    want = [last[n // 2] / 1000, last[min(n - 1, n * 99 // 100)] / 1000, last[-1] / 1000, n,
            min(got["delays"]) / 1000, 200.0]
    assert got["stats"] == pytest.approx(want), (got["stats"], want)
    assert got["grown"] < 512, got  # the returned tuple and its floats (224 B here), no 1 KB copy


def test_ticks_keep_their_period_while_the_other_thread_collects(tmp_path, broker, live_inverter, firmware):
    # The cloud thread collects garbage every few KB; on the unix port each
    # collection signals the control thread, which ends its sleep early. The
    # loop must sleep on to its deadline: ticks never start early (a start
    # delay below zero) and never come faster than the period.
    b = broker()
    inv = live_inverter()
    cfg_path, _ = site_config(tmp_path, inv.port, b.port, mqtt__telemetry_s=1)
    t0 = time.monotonic()
    fw = firmware(cfg_path)
    assert fw.wait_event("cloud_connected", timeout=15)
    fw.wait_event("never", timeout=4)
    fw.stop()
    wall_s = time.monotonic() - t0
    stop = fw.events("stop")[-1]
    d = stop["tick_delay_ms"]
    # no tick started before its time, and two starts are never closer than
    # the period minus the lateness of the first (the schedule is absolute:
    # a late tick is followed by one on time, never by an early one)
    assert d["min"] >= 0, d
    assert d["min_interval"] >= d["period"] - d["max"], d
    assert d["min_interval"] > 0, d
    assert d["ticks"] <= wall_s / 0.2 + 2, d
