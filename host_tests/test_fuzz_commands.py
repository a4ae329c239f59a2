"""1,000+ hostile command payloads through Mosquitto: the firmware keeps
running in a small heap, answers each with the right error code and, when
the body is an object with a string id of at most 36 characters, that id;
changes nothing, and still obeys a valid command afterwards."""
import json
import random

from conftest import site_config
from tools.cloud_client import Cloud, command, sign

KEY = json.loads(open(__file__.replace("host_tests/test_fuzz_commands.py", "examples/site.json")).read())["command_key"]
DEV = "home-charger-01"


def signed(body_obj_or_text):
    b = body_obj_or_text if isinstance(body_obj_or_text, str) else json.dumps(body_obj_or_text)
    return json.dumps({"body": b, "sig": sign(KEY, b)}).encode()


class Cases(list):
    """(payload, expected error code, expected id); appended as pairs: the
    id is "f" (every signed body's) unless the case says otherwise."""

    def append(self, case, cid="f"):
        payload, code = case
        super().append((payload, code, cid))


def hostile(rng, now, accepted_seq):
    """-> list of (payload bytes, expected error code, expected id)."""
    out = Cases()
    no_id = None
    good = {"id": "f", "seq": accepted_seq + 1, "exp": now + 600, "op": "set_reserve", "args": {"pct": 40}}

    def body(**kw):
        b = dict(good)
        b.update(kw)
        return b

    for _ in range(420):  # random bytes
        n = rng.randrange(0, 300)
        out.append((bytes(rng.randrange(256) for _ in range(n)), "bad_payload"), no_id)
    for _ in range(5):  # 200 kB
        out.append((b'{"body": "' + b"A" * 200_000 + b'", "sig": "00"}', "bad_payload"), no_id)
    out.append((command(KEY, "set_reserve", {"pct": 40, "pad": "x" * 200_000}, accepted_seq + 1, now + 600), "bad_payload"),
               no_id)
    for depth in (50, 500, 1900):  # deep nesting, outer and inside a signed body: refused before parsing
        out.append((b"[" * depth + b"]" * depth, "bad_payload"), no_id)
        out.append((signed("[" * depth + "]" * depth), "bad_payload"), no_id)
        out.append((signed(json.dumps(body(args={"pct": json.loads("[" * min(depth, 900) + "]" * min(depth, 900))}))),
                    "bad_payload"), no_id)
    for depth in (2, 4):  # shallow nesting inside args is merely the wrong type
        out.append((signed(json.dumps(body(args={"pct": json.loads("[" * depth + "]" * depth)}))), "bad_args"))
    for _ in range(100):  # bad UTF-8 and control bytes inside JSON strings
        junk = bytes(rng.randrange(128, 256) for _ in range(rng.randrange(1, 40)))
        out.append((b'{"body": "' + junk + b'", "sig": "' + b"0" * 64 + b'"}', "bad_payload"), no_id)
    wrong_types = [
        dict(id=5), dict(id=""), dict(id="x" * 37), dict(seq="7"), dict(seq=7.5), dict(seq=True), dict(exp="soon"),
        dict(exp=None), dict(op=5), dict(op=None), dict(args=[]), dict(args="pct=40"), dict(args=None),
        # floats where integers go, and seqs beyond 2**53 - 1
        dict(seq=float(accepted_seq + 1)), dict(exp=float(now + 600)), dict(seq=2**53), dict(seq=2**63),
    ]
    for _ in range(12):
        for w in wrong_types:
            cid = w.get("id", "f")
            out.append((signed(body(**w)), "bad_payload"), cid if isinstance(cid, str) and len(cid) <= 36 else no_id)
    for missing in ("id", "seq", "exp", "op", "args"):
        b = body()
        del b[missing]
        out.append((signed(b), "bad_payload"), no_id if missing == "id" else "f")
    for outer in ([], "text", 7, None, {"body": {"id": "x"}, "sig": "00"}, {"body": "{}"}, {"sig": "00" * 32}):
        out.append((json.dumps(outer).encode(), "bad_payload"), no_id)
    # a key twice in one object (json would keep the last): signed, refused with the id
    good_text = json.dumps(good)
    for dup in (', "seq": %d}' % (accepted_seq + 2), ', "args": {"pct": 45}}', ', "op": "set_mode"}'):
        out.append((signed(good_text[:-1] + dup), "bad_payload"))
    out.append((signed(good_text[:-2] + ', "pct": 45}}'), "bad_payload"))
    out.append((signed(good_text[:-2] + ', "p\\u0063t": 45}}'), "bad_payload"))  # the same key, escaped
    out.append((json.dumps({"body": good_text[:-1] + ', "seq": 99}', "sig": "00" * 32}).encode(), "bad_sig"))
    out.append((signed(body(args={"pct": [{"a": 1}, {"a": 1}]})), "bad_args"))  # sibling objects: not twice
    out.append((signed(json.dumps({**good, **{f"k{i}": i for i in range(100)}})), "bad_payload"), no_id)  # > 64 keys
    for f in (float(-1000), 0.5):  # floats for ev_w / until
        out.append((signed(body(op="dispatch", args={"ev_w": f, "until": now + 60})), "bad_args"))
        out.append((signed(body(op="dispatch", args={"ev_w": -1000, "until": now + 60 + f})), "bad_args"))
    huge = [10**30, -10**30, 1e308, -1e308, 2**63, 2**31, -2**31 - 1]
    for h in huge:  # huge numbers: out of range, never a crash or an overflow
        out.append((signed(body(args={"pct": h})), "bad_args"))
        out.append((signed(body(op="dispatch", args={"ev_w": h, "until": now + 60})), "bad_args"))
        out.append((signed(body(op="dispatch", args={"ev_w": -1000, "until": h})), "bad_args"))
        out.append((signed(body(seq=10**30, op="nope")), "bad_payload"))  # beyond 2**53 - 1, not remembered
        out.append((signed(body(seq=2**53 - 1, op="nope")), "bad_op"))  # a rejected seq is not remembered
    for _ in range(200):  # forged signatures
        b = json.dumps(body(args={"pct": rng.choice([35, 40, 45])}))
        sig = rng.choice([
            "".join(rng.choice("0123456789abcdef") for _ in range(64)),
            sign(KEY, b + " "), sign("ab" * 32, b), sign(KEY, b)[:-2] + "00", sign(KEY, b)[:63], "zz" * 32, ""])
        out.append((json.dumps({"body": b, "sig": sig}).encode(), "bad_sig"))
    for _ in range(60):  # replayed, expired, unknown op, bad args: all signed
        kind = rng.randrange(4)
        if kind == 0:
            out.append((signed(body(seq=accepted_seq - rng.randrange(0, 3))), "replay"))
        elif kind == 1:
            out.append((signed(body(exp=now - rng.randrange(1, 10**6))), "expired"))
        elif kind == 2:
            out.append((signed(body(op=rng.choice(["reboot", "DISPATCH", "", "set_reserve "]))), "bad_op"))
        else:
            out.append((signed(body(op="set_mode", args={"mode": rng.choice(["turbo", "", 1, None])})), "bad_args"))
    for args in ({"pct": 5}, {"pct": 95}, {"pct": "40"}, {"pct": 40, "extra": 1}, {}):
        out.append((signed(body(args=args)), "bad_args"))
    out.append((signed(body(op="set_departure", args={"time": "25:00", "soc_pct": 80})), "bad_args"))
    out.append((signed(body(op="set_departure", args={"time": "07:30", "soc_pct": 10})), "bad_args"))
    out.append((signed(body(op="dispatch", args={"ev_w": -1000, "until": now + 5 * 3600})), "bad_args"))
    out.append((signed(body(op="dispatch", args={"ev_w": -1000, "until": now - 1})), "bad_args"))
    out.append((b"", "bad_payload"), no_id)
    rng.shuffle(out)
    return out


def test_fuzz(tmp_path, broker, live_inverter, firmware):
    rng = random.Random(42)
    b = broker()
    inv = live_inverter(sim_epoch=1781452800 + 19 * 3600)
    cfg_path, cfg = site_config(tmp_path, inv.port, b.port)
    # the shipped .mpy form, in a heap whose free part cannot hold a 200 kB payload
    fw = firmware(cfg_path, {"V2G_CLOCK": inv.clock.to_env()}, heap="256k", compiled=True,
                  build_dir=tmp_path / "mpy")
    cloud = Cloud("127.0.0.1", b.port, DEV)
    assert cloud.wait(lambda c: b"online" in c.topic("status"), timeout=30), fw.output()[-3000:]
    now = int(inv.clock.now())
    cloud.send(command(KEY, "set_reserve", {"pct": 35}, 7, now + 600, "first"))
    first = cloud.result("first", timeout=30)
    assert first and first["ok"] is True, (first, fw.output()[-3000:])
    store = tmp_path / "store"
    settings_before = (store / "settings.json").read_bytes()
    seq_before = (store / "cmd_seq.json").read_bytes()
    cases = hostile(rng, now, 7)
    assert len(cases) >= 1000
    for payload, _, _ in cases:
        cloud.c.publish(cloud.root + "cmd", payload, qos=1)
    got = cloud.wait(lambda c: len(c.json("cmd/result")) >= len(cases) + 1, timeout=120)
    results = cloud.json("cmd/result")[1:]
    assert got, f"only {len(results)} of {len(cases)} answered\n" + fw.output()[-3000:]
    assert len(results) == len(cases)
    mismatches = [(p[:80], want, cid, r) for (p, want, cid), r in zip(cases, results)
                  if r["ok"] or r["error"] != want or r["id"] != cid]
    assert not mismatches, mismatches[:5]
    assert fw.proc.poll() is None, "the firmware died"
    assert not fw.events("internal_error") and not fw.events("cloud_lost")
    assert (store / "settings.json").read_bytes() == settings_before
    assert (store / "cmd_seq.json").read_bytes() == seq_before
    # still obeys a valid command
    cloud.send(command(KEY, "set_reserve", {"pct": 41}, 8, int(inv.clock.now()) + 600, "after"))
    assert cloud.result("after")["ok"] is True
    assert cloud.wait(lambda c: [s for s in c.json("state") if s["reserve_pct"] == 41.0], timeout=10)
    cloud.close()
