"""Persistent state is per device: which directory a device's state lives
in (v2g.storedir.store_dir) and who owns it (v2g.store.open_store)."""
import json
import re
import time

from conftest import ROOT, run_mp, site_config
from tools.cloud_client import Cloud, command

KEY = json.loads((ROOT / "examples" / "site.json").read_text())["command_key"]

def test_unix_default_store_is_one_per_device_and_a_board_keeps_one():
    res = run_mp("store_cases", "default_dirs").json()
    assert res == ["build/data/site-a", "build/data/site-b", "/data", "/data", "/tmp/x"]


def test_a_store_of_another_device_is_emptied_and_an_own_one_kept(tmp_path):
    d = str(tmp_path / "data")
    res = run_mp("store_cases", "other_device", d)
    a, a_again, b, owner, b_again = res.json()
    state = ["cmd_seq.json", "notes.txt", "outbox.jsonl", "outbox.jsonl.tmp", "outbox.meta", "owner.json",
             "settings.json"]
    assert a == a_again == state
    assert b == ["notes.txt", "owner.json"]
    assert owner == {"device_id": "site-b"}
    assert b_again == ["notes.txt", "owner.json", "settings.json"]
    resets = [json.loads(x) for x in res.lines()[:-1] if '"store_reset"' in x]
    assert len(resets) == 1
    r = resets[0]
    assert (r["old_device_id"], r["device_id"], r["dir"]) == ("site-a", "site-b", d)
    assert sorted(r["removed"]) == ["cmd_seq.json", "outbox.jsonl", "outbox.jsonl.tmp", "outbox.meta",
                                    "settings.json"]
    assert r["outbox_bytes"] == len("of site-a")


def test_a_store_without_owner_is_adopted_and_a_bad_owner_file_is_not_trusted(tmp_path):
    d = str(tmp_path / "data")
    res = run_mp("store_cases", "no_owner", d)
    kept, after = res.json()
    assert kept == ["owner.json", "settings.json"]
    assert after == ["owner.json"]
    assert '"old_device_id": null' in res.out


def test_every_state_file_the_firmware_names_is_listed():
    """A state file missing from storedir.STATE_FILES would pass to the next
    device_id: every "<dir> + "/name"" in the firmware must be listed."""
    src = "".join(p.read_text() for p in (ROOT / "firmware" / "v2g").rglob("*.py"))
    names = set(re.findall(r'(?:store_dir|dirpath)\s*\+\s*"/([\w.-]+)"', src))
    assert names >= {"outbox.jsonl", "outbox.meta", "cmd_seq.json", "settings.json"}  # the pattern still finds them
    from_store = re.search(r"STATE_FILES = \(([^)]*)\)", (ROOT / "firmware" / "v2g" / "storedir.py").read_text())
    listed = set(re.findall(r'"([^"]+)"', from_store.group(1)))
    assert names <= listed, names - listed


def test_firmware_redeployed_with_another_device_id_inherits_nothing(tmp_path, broker, live_inverter, firmware):
    """site-a accepts a command (seq 50, reserve 40 %) and queues telemetry
    while the broker is down; the same store then runs as site-b: none of
    site-a's telemetry goes out under site-b, seq 1 is not a replay and the
    reserve is the config's."""
    b = broker()
    inv = live_inverter(soc_pct=60)
    env = {"V2G_CLOCK": inv.clock.to_env()}
    store = tmp_path / "store"
    path_a, _ = site_config(tmp_path, inv.port, b.port, device_id="site-a", mqtt__telemetry_s=1)
    cloud_a = Cloud("127.0.0.1", b.port, "site-a")
    fw = firmware(path_a, env)
    try:
        assert cloud_a.wait(lambda c: b"online" in c.topic("status"), timeout=20), fw.output()
        now = int(inv.clock.now())
        cloud_a.send(command(KEY, "set_reserve", {"pct": 40}, 50, now + 600, "a50"))
        assert cloud_a.result("a50")["ok"] is True
    finally:
        cloud_a.close()
    b.stop()
    # telemetry now stays in site-a's outbox
    assert fw.wait_event("cloud_connect_failed", timeout=20)
    outbox = store / "outbox.jsonl"
    time.sleep(3)
    assert fw.stop() == 0
    meta = store / "outbox.meta"  # none yet if nothing was acked
    pending = json.loads(meta.read_text()) if meta.exists() else {"acked": 0}
    lines = outbox.read_text().splitlines()
    unacked = [json.loads(x) for x in lines if json.loads(x)["seq"] > pending["acked"]]
    assert unacked, (lines, pending)  # the precondition: site-a left telemetry behind

    b.start()
    path_b, _ = site_config(tmp_path, inv.port, b.port, device_id="site-b", mqtt__telemetry_s=1)
    cloud_b = Cloud("127.0.0.1", b.port, "site-b")
    try:
        fw_b = firmware(path_b, env)
        assert cloud_b.wait(lambda c: b"online" in c.topic("status"), timeout=20), fw_b.output()
        assert cloud_b.wait(lambda c: len(c.json("telemetry")) >= 2, timeout=20), fw_b.output()
        tel = cloud_b.json("telemetry")
        assert tel[0]["seq"] == 1
        # none of site-a's records (the same second can start both: compare records)
        assert not [r for r in tel if r in unacked], (unacked, tel)
        st = cloud_b.json("state")
        assert st and st[-1]["reserve_pct"] == 30, st  # the site config's, not site-a's 40
        now = int(inv.clock.now())
        cloud_b.send(command(KEY, "set_reserve", {"pct": 35}, 1, now + 600, "b1"))
        assert cloud_b.result("b1")["ok"] is True  # site-a's seq 50 is not site-b's
        reset = fw_b.events("store_reset")
        assert len(reset) == 1 and (reset[0]["old_device_id"], reset[0]["device_id"]) == ("site-a", "site-b")
        assert "outbox.jsonl" in reset[0]["removed"] and reset[0]["outbox_bytes"] > 0
    finally:
        cloud_b.close()
