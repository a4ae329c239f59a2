"""The whole firmware with a CHAdeMO car: the vehicle simulator replays the
real Nissan Leaf capture over SLCAN (python-can), the SunSpec simulator is
the power stage, Mosquitto the broker. Every frame the firmware sends is
decoded with the repo's DBC (cantools)."""
import json
import signal
import subprocess
import sys
import time

import cantools
import pytest

from conftest import ROOT, site_config

DB = cantools.database.load_file(str(ROOT / "tools" / "chademo.dbc"))
NIGHT = 1781452800 + 2 * 3600  # 02:00 local: the plan charges for departure


def start_vehicle(tmp_path, *extra, where="tcp"):
    """The car on an SLCAN link: a pty ("slcan:PATH") or TCP ("slcan-tcp:...")."""
    rec = tmp_path / "rec.json"
    link = ["--tcp", "0"] if where == "tcp" else ["--pty-link", str(tmp_path / "pty")]
    p = subprocess.Popen([sys.executable, "-m", "tools.sim.vehicle", *link, "--record", str(rec), *extra],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("READY slcan"), line + p.stderr.read()
    return p, line.split()[1], rec


def stop_vehicle(p, rec):
    p.send_signal(signal.SIGTERM)
    p.wait(10)
    return json.loads(rec.read_text())


def check_charger_frames(frames):
    """Every 0x108/0x109 the firmware sent, decoded and checked: our maximum
    offered until the session ends, then 0 A; the charging flag never set
    with stop control at <= 5 A. -> (charging loop seen, its end seen),
    and the 0x109 status bytes (charging, lock, stop control bits) as they
    changed."""
    saw_charging = saw_stop = False
    avail = 15
    seq = []
    for f in frames:
        m = DB.decode_message(f["id"], bytes.fromhex(f["data"]), decode_choices=False)
        if f["id"] == 0x108:
            assert m["AvailableVoltage"] == 500
            avail = m["AvailableCurrent"]
        elif f["id"] == 0x109:
            assert m["ProtocolNumber"] == 2 and not m["StatusMalfunction"]
            assert 0 <= m["PresentCurrent"] <= 15
            assert not (m["StatusCharging"] and m["StatusStopControl"] and m["PresentCurrent"] <= 5)
            saw_charging |= bool(m["StatusCharging"])
            ending = saw_charging and bool(m["StatusStopControl"])
            saw_stop |= ending
            assert avail == (0 if ending else 15)
            st = m["StatusCharging"] | m["StatusLocked"] << 2 | m["StatusStopControl"] << 5
            if not seq or seq[-1] != st:
                seq.append(st)
    return saw_charging, saw_stop, seq


def modes(fw):
    return [(e["mode"], e["reason"], e["setpoint_w"], e.get("vehicle")) for e in fw.events("mode")]


@pytest.mark.parametrize("where", ["pty", "tcp"])
def test_a_whole_session_with_the_car(tmp_path, broker, live_inverter, firmware, where):
    b = broker()
    inv = live_inverter(sim_epoch=NIGHT, soc_pct=73, ramp_w_per_s=1e6)
    veh, link, rec_path = start_vehicle(tmp_path, "--speed", "4", "--hold", "--stop-after", "12", "--soc", "73",
                                        where=where)
    assert link.startswith("slcan:" if where == "pty" else "slcan-tcp:")
    try:
        cfg_path, cfg = site_config(tmp_path, inv.port, b.port, vehicle={"driver": "chademo", "link": link})
        fw = firmware(cfg_path, {"V2G_CLOCK": inv.clock.to_env()})  # the night, whatever the hour
        assert fw.wait_event("mode", lambda e: e["mode"] == "charge", timeout=20), modes(fw)
        charging = fw.wait_event("mode", lambda e: e["mode"] == "charge")
        assert charging["reason"] == "departure_charge" and charging["vehicle"] == "charging"
        assert charging["soc_pct"] == 73.0  # the car's SoC is the one reported
        time.sleep(2)
        assert inv.inv.ev_w > 0
        # the car limits the window: 14 A asked x the 250 V it declared (no DC measurement)
        assert 0 < inv.inv.ev_w <= 14 * 250 + 1
        n_before = len(fw.events("mode"))
        stop = fw.wait_event("mode", lambda e: e["mode"] == "hold" and e["reason"].startswith("vehicle_")
                             and fw.events("mode").index(e) >= n_before, timeout=25)
        assert stop, modes(fw)
        # power stops in the very tick that saw the car's stop request
        assert stop["setpoint_w"] == 0 and stop["vehicle"] in ("stopping", "stopped")
        time.sleep(0.5)
        assert inv.inv.map.get(704, "WSet") == 0 and abs(inv.inv.ev_w) < 1
        assert fw.stop() == 0
    finally:
        rec = stop_vehicle(veh, rec_path)
    frames = rec["frames"]
    assert rec["report"]["undecodable"] == 0
    ids = {f["id"] for f in frames}
    assert {0x108, 0x109, 0x208, 0x209} <= ids
    saw_charging, saw_stop, _ = check_charger_frames(frames)
    assert saw_charging and saw_stop
    # 100 ms cycle: about ten 0x109 per second of session
    span = frames[-1]["t"] - frames[0]["t"]
    n109 = sum(1 for f in frames if f["id"] == 0x109)
    assert 7 * span <= n109 <= 12 * span


def test_soc_disagreement_holds_and_raises_an_event(tmp_path, broker, live_inverter, firmware):
    b = broker()
    inv = live_inverter(sim_epoch=NIGHT, soc_pct=50)  # the inverter believes 50 %
    veh, link, rec_path = start_vehicle(tmp_path, "--speed", "4", "--hold", "--soc", "73")
    try:
        cfg_path, cfg = site_config(tmp_path, inv.port, b.port,
                                    vehicle={"driver": "chademo", "link": link, "soc_mismatch_pct": 10})
        fw = firmware(cfg_path, {"V2G_CLOCK": inv.clock.to_env()})  # the night, whatever the hour
        ev = fw.wait_event("soc_mismatch", timeout=20)
        assert ev and ev["vehicle_soc_pct"] == 73.0 and ev["inverter_soc_pct"] == 50.0
        hold = fw.wait_event("mode", lambda e: e["reason"] == "soc_mismatch", timeout=5)
        assert hold and hold["mode"] == "hold" and hold["setpoint_w"] == 0
        assert not [e for e in fw.events("mode") if e["mode"] in ("charge", "discharge")]
    finally:
        stop_vehicle(veh, rec_path)


def test_lost_car_stops_power_within_a_period(tmp_path, broker, live_inverter, firmware):
    b = broker()
    inv = live_inverter(sim_epoch=NIGHT, soc_pct=73, ramp_w_per_s=1e6)
    veh, link, rec_path = start_vehicle(tmp_path, "--speed", "4", "--hold", "--soc", "73")
    cfg_path, cfg = site_config(tmp_path, inv.port, b.port, vehicle={"driver": "chademo", "link": link})
    fw = firmware(cfg_path, {"V2G_CLOCK": inv.clock.to_env()})  # the night, whatever the hour
    assert fw.wait_event("mode", lambda e: e["mode"] == "charge", timeout=20), modes(fw)
    n_before = len(fw.events("mode"))
    veh.send_signal(signal.SIGKILL)  # the car (and its SLCAN link) vanish mid-charge
    veh.wait(5)
    # the first fault after the kill is the car's; a hold may come first
    # (power 0 too) when a loaded host delays the inverter's SoC past
    # stale_periods at the same moment
    after = lambda e: fw.events("mode").index(e) >= n_before  # noqa: E731
    ev = fw.wait_event("mode", lambda e: after(e) and e["mode"] == "fault", timeout=5)
    assert ev and ev["fault"].startswith("vehicle:"), modes(fw)
    assert all(e["mode"] in ("fault", "hold") and e["setpoint_w"] == 0
               for e in fw.events("mode")[n_before:fw.events("mode").index(ev) + 1]), modes(fw)
    assert fw.wait_event("fault_raised", lambda e: e["fault"].startswith("vehicle:"))


def test_shutdown_ends_the_cars_session(tmp_path, broker, live_inverter, firmware):
    # the firmware stops (SIGINT) mid-charge: the charger ends the session as
    # CHAdeMO asks (stop("shutdown")), the car ramps down and opens its
    # contactors before the firmware exits
    b = broker()
    inv = live_inverter(sim_epoch=NIGHT, soc_pct=73, ramp_w_per_s=1e6)
    veh, link, rec_path = start_vehicle(tmp_path, "--speed", "4", "--hold", "--soc", "73", "--replug-after", "30")
    try:
        cfg_path, cfg = site_config(tmp_path, inv.port, b.port, vehicle={"driver": "chademo", "link": link})
        fw = firmware(cfg_path, {"V2G_CLOCK": inv.clock.to_env()})  # the night, whatever the hour
        assert fw.wait_event("mode", lambda e: e["mode"] == "charge", timeout=20), modes(fw)
        # mid-charge: the session in its charging loop (on a loaded machine
        # the guard's "charge" can come before the car asks for current)
        assert fw.wait_event("chademo", lambda e: e["transition"].endswith("-> charging"), timeout=20), \
            fw.events("chademo")
        time.sleep(1)
        assert fw.stop() == 0
        ended = [e for e in fw.events("chademo") if e["transition"].endswith("-> stopping")]
        assert ended and ended[-1]["why"] == "shutdown", fw.events("chademo")
        assert fw.events("chademo")[-1]["transition"] == "stopping -> stopped"
    finally:
        rec = stop_vehicle(veh, rec_path)
    assert rec["report"]["charger_stops"] == 1, "the car saw the charger end it"
    saw_charging, saw_stop, seq = check_charger_frames(rec["frames"])
    assert saw_charging and saw_stop
    loop = seq.index(0x05)
    assert seq[loop:][-1] == 0x20 and 0x24 in seq[loop:], seq
