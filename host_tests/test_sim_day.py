"""`make sim` end to end, shortened: the day report has the contract's keys
and the day's checks hold (departure met, reserve kept, off-peak share,
no faults, dispatches honoured), with each broker and with the car."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT

KEYS = {"offpeak_charge_share", "departure_soc_pct", "min_soc_pct", "energy_in_wh", "energy_out_wh",
        "export_revenue", "import_cost", "faults"}


def run_sim(tmp_path, *args):
    out = tmp_path / "sim"
    res = subprocess.run([sys.executable, "-m", "tools.sim", "--wall-s", "30", "--quiet", "--out", str(out), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert (out / "day.png").stat().st_size > 20000
    return rep, res.stdout


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_day_report(tmp_path, broker):
    rep, text = run_sim(tmp_path, "--broker", broker)
    assert KEYS <= set(rep)
    assert rep["faults"] == [] and rep["ok"] is True
    assert rep["departure_soc_pct"] >= 80 and rep["min_soc_pct"] >= 30
    assert rep["offpeak_charge_share"] >= 0.8
    assert rep["energy_in_wh"] > 10000 and rep["energy_out_wh"] > 10000
    assert rep["dispatches_sent"] == 2 and rep["dispatches_honoured"] == 2 and rep["dispatches_limited"] == 1
    first = rep["dispatches"][0]
    assert abs(first["ev_w_mean"] - first["ev_w"]) < 300  # the EV did what the cloud asked
    over, under = rep["freq_responses"]
    assert over["ev_w_during"] > over["ev_w_before"] + 200  # over-frequency: less export
    assert "=== day report ===" in text and "dispatch peak-18:00" in text


def test_day_with_the_chademo_car(tmp_path):
    rep, _ = run_sim(tmp_path, "--vehicle")
    assert rep["ok"] is True
    v = rep["vehicle"]
    assert v["undecodable"] == 0 and v["received"] > 500
    assert {"charging", "discharging"} <= set(v["states"])
