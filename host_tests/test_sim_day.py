"""`make sim` end to end, shortened: the day report has the contract's keys
and the day's checks hold (departure met, reserve kept, off-peak share,
no faults, dispatches honoured, the setpoint refreshed within the inverter's
reversion window), with each broker and with the car."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from tools.sim.day import RunDir

SHM = Path("/dev/shm")

KEYS = {"offpeak_charge_share", "departure_soc_pct", "min_soc_pct", "energy_in_wh", "energy_out_wh",
        "export_revenue", "import_cost", "faults"}


def run_sim(tmp_path, *args):
    out = tmp_path / "sim"
    res = subprocess.run([sys.executable, "-m", "tools.sim", "--wall-s", "30", "--quiet", "--out", str(out), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert (out / "day.png").stat().st_size > 20000
    # the worst time between two setpoint refreshes, well inside the window
    assert rep["checks"]["setpoint_refreshed_in_time"] is True
    assert 0 < rep["max_setpoint_gap_s"] < rep["revert_window_s"] and rep["setpoint_gap_vs_revert"] < 1
    assert rep["max_setpoint_gap_real_ms"] > 0 and rep["setpoint_refreshes"] > 100
    # the store and the inverter's snapshot lived in memory, and are left in out
    store = Path(json.loads((out / "site.json").read_text())["store"]["dir"])
    if SHM.is_dir() and os.access(SHM, os.W_OK):
        assert SHM in store.parents
    assert not store.parent.exists()
    assert (out / "data" / "outbox.meta").exists() and (out / "inverter_state.json").exists()
    return rep, res.stdout


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_day_report(tmp_path, broker):
    rep, text = run_sim(tmp_path, "--broker", broker)
    assert KEYS <= set(rep)
    assert rep["faults"] == [] and rep["ok"] is True
    # the reserve, less what one sampling interval at the crossing exported
    # before the firmware's next tick could see it (the warped clock)
    assert rep["departure_soc_pct"] >= 80 and rep["min_soc_pct"] >= 30 - rep["reserve_overshoot_allowed_pct"], rep
    assert rep["reserve_overshoot_allowed_pct"] < 1, rep
    assert rep["offpeak_charge_share"] >= 0.8
    assert rep["energy_in_wh"] > 10000 and rep["energy_out_wh"] > 10000
    assert rep["dispatches_sent"] == 2 and rep["dispatches_honoured"] == 2 and rep["dispatches_limited"] == 1
    first = rep["dispatches"][0]
    # the EV did what the cloud asked: it got there (the ramp: its length in
    # simulated time is the host's speed, fewer ticks per wall second on a
    # loaded one) and held it for the rest of the hour
    assert first["ramp_s"] is not None and first["ramp_s"] < 3600 // 2, first
    assert abs(first["ev_w_mean"] - first["ev_w"]) < 300, first
    over, under = rep["freq_responses"]
    assert over["ev_w_during"] > over["ev_w_before"] + 200  # over-frequency: less export
    assert "=== day report ===" in text and "dispatch peak-18:00" in text


def test_day_with_the_chademo_car(tmp_path):
    rep, _ = run_sim(tmp_path, "--vehicle")
    assert rep["ok"] is True
    v = rep["vehicle"]
    assert v["undecodable"] == 0 and v["received"] > 500
    assert {"charging", "discharging"} <= set(v["states"])


def test_run_dir_is_in_memory_and_leaves_its_files_in_out(tmp_path):
    """The files a day rewrites hundreds of times a wall second (the
    inverter's snapshot, the firmware's store) are kept off the disk, whose
    journal can hold a rename or an append for the whole reversion window."""
    out = tmp_path / "sim"
    out.mkdir()
    (out / "data").mkdir()
    (out / "data" / "stale").write_text("from the last run")
    (out / "inverter_state.json").write_text("{}")
    shm = SHM.is_dir() and os.access(SHM, os.W_OK)
    if shm:  # one left by a sim that was killed: its pid is gone
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout.strip()
        left = SHM / f"v2g-sim-{dead}-x"
        left.mkdir()
    rd = RunDir(out)
    try:
        assert not (out / "data").exists() and not (out / "inverter_state.json").exists()
        if shm:
            assert rd.path.parent == SHM and not left.exists()
        rd.data.mkdir()
        (rd.data / "outbox.jsonl").write_text("record\n")
        rd.state.write_text('{"sim_s": 1}')
    finally:
        rd.close()
    assert not rd.path.exists()
    assert (out / "data" / "outbox.jsonl").read_text() == "record\n"
    assert json.loads((out / "inverter_state.json").read_text()) == {"sim_s": 1}
