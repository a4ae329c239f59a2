"""The persistent telemetry outbox: unit behaviour on the unix port, and the
whole firmware killed with SIGKILL at random moments many times."""
import json
import random
import signal
import time

from conftest import run_mp, site_config
from tools.cloud_client import Cloud

def test_append_peek_ack_and_restart(tmp_path):
    res = run_mp("outbox_cases", "append_peek_ack_and_restart", tmp_path).json()
    assert res == [[1, 2, 3, 4, 5], 1, 0, 3, 3, 6]


def test_unflushed_acks_resend_the_same_records(tmp_path):
    res = run_mp("outbox_cases", "unflushed_acks", tmp_path).json()
    assert res == [1, 3]  # re-sent with the same seq, never a new one


def test_torn_tail_is_cut_and_seq_never_reused(tmp_path):
    res = run_mp("outbox_cases", "torn_tail", tmp_path).json()
    assert res == [3, 4, 4]


def test_full_outbox_drops_oldest_and_reports(tmp_path):
    res = run_mp("outbox_cases", "full_drops_oldest", tmp_path)
    a, b = [json.loads(x) for x in res.lines()[-2:]]
    assert a == [10, 16, 15, 0, 15]
    assert b == [10, 16, 15]


def test_compaction_keeps_unacked_and_seq(tmp_path):
    res = run_mp("outbox_cases", "compaction", tmp_path).json()
    assert res == [True, 20, 181, 201]


def test_kill_9_at_random_moments_loses_and_reuses_no_seq(tmp_path, broker, live_inverter, firmware):
    """The firmware makes 20 telemetry records a second (x20 warp) and is
    killed with SIGKILL 25 times at random moments, the broker restarted on
    the way; every seq it ever published arrives, with one content each."""
    rng = random.Random(1234)
    b = broker(persistence=True)
    inv = live_inverter(warp=20.0, sim_epoch=1781452800 + 2 * 3600)
    cloud = Cloud("127.0.0.1", b.port, "home-charger-01", client_id="cloud-kill-test")
    cfg_path, cfg = site_config(tmp_path, inv.port, b.port, mqtt__telemetry_s=1, mqtt__outbox_records=5000)
    env = {"V2G_CLOCK": inv.clock.to_env()}
    kills = 0
    for i in range(25):
        fw = firmware(cfg_path, env)
        time.sleep(rng.uniform(0.15, 1.2))
        fw.proc.send_signal(signal.SIGKILL)
        fw.proc.wait(5)
        kills += 1
        if i in (8, 17):
            b.stop()
            fw = firmware(cfg_path, env)
            time.sleep(rng.uniform(0.3, 1.0))  # producing while the broker is down
            fw.proc.send_signal(signal.SIGKILL)
            fw.proc.wait(5)
            b.start()
    # a last run that is allowed to deliver everything, then stops cleanly
    fw = firmware(cfg_path, env)
    assert fw.wait_event("cloud_connected", timeout=20)
    time.sleep(2)
    assert fw.stop() == 0
    meta = json.loads((tmp_path / "store" / "outbox.meta").read_text())
    # the highest seq handed out: the meta's `next` is saved with acks, so
    # records appended after the last saved ack are only in the log (which
    # boot reads too: their seqs are never handed out again)
    log_path = tmp_path / "store" / "outbox.jsonl"
    in_log = [json.loads(x)["seq"] for x in log_path.read_text().splitlines()] if log_path.exists() else []
    last = max([meta["next"] - 1] + in_log)
    got = cloud.wait(lambda c: last in {r["seq"] for r in c.json("telemetry")}, timeout=20)
    assert got, "the last record never arrived"
    recs = cloud.json("telemetry")
    cloud.close()
    by_seq = {}
    for r in recs:
        prev = by_seq.setdefault(r["seq"], r)
        assert prev == r, f"seq {r['seq']} reused: {prev} vs {r}"
    seqs = sorted(by_seq)
    assert seqs[0] == 1 and seqs == list(range(1, last + 1)), "a seq was lost"
    assert meta["dropped"] == 0
    assert kills == 25 and last > 100
