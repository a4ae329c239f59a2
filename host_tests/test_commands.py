"""Signed commands on the unix port, against a real Controller with its
inverter link down: checked in one place against the settings as they will
be, never dropped once accepted, hostile-but-signed bodies refused with
their id. The commands are made and signed here (CPython), handled there
(host_tests/mp/commands_cases.py)."""
import json
import time

from conftest import run_mp
from tools.cloud_client import command, sign

KEY = json.loads(open(__file__.replace("host_tests/test_commands.py", "examples/site.json")).read())["command_key"]


def setup(tmp_path, payloads, settings=None):
    """The arguments of a commands_cases case: STORE (with `settings` saved in
    it, if given) and the file holding `payloads`."""
    store = tmp_path / "store"
    store.mkdir(exist_ok=True)
    if settings is not None:
        (store / "settings.json").write_text(json.dumps(settings))
    # the payloads go by file: a flood of signed commands is too long for a command line
    path = tmp_path / "payloads.json"
    path.write_text(json.dumps([p.decode() for p in payloads]))
    return str(store), str(path)


def cmd(op, args, seq, cid=None, exp=None):
    return command(KEY, op, args, seq, exp if exp is not None else int(time.time()) + 600, cid or f"c{seq}")


def signed_text(body_text):
    return json.dumps({"body": body_text, "sig": sign(KEY, body_text)}).encode()


def test_a_flood_is_bounded_before_acceptance_and_nothing_accepted_is_dropped(tmp_path):
    # 40 commands before the control loop's next tick: the dispatch first,
    # then 39 reserves, each a different value
    until = int(time.time()) + 1800
    payloads = [cmd("dispatch", {"ev_w": -3000, "until": until}, 1)]
    payloads += [cmd("set_reserve", {"pct": 30 + i}, 1 + i) for i in range(1, 40)]
    out = run_mp("commands_cases", "flood", *setup(tmp_path, payloads)).json()
    res = out["res"]
    ok = [r for r in res if r["ok"]]
    busy = [r for r in res if r["error"] == "busy"]
    assert len(ok) + len(busy) == 40
    assert [r["id"] for r in ok] == [f"c{i}" for i in range(1, 17)]  # the inbox holds 16
    assert [r["id"] for r in busy] == [f"c{i}" for i in range(17, 41)]
    assert all("nothing changed" in r["detail"] for r in busy)
    # every accepted one was applied: the dispatch and the last reserve accepted
    assert out["dropped"] == 0
    assert out["dispatch"] == -3000
    assert out["again"]["ok"] is True and out["again"]["id"] == "c17"  # its seq was not used
    assert out["applied"] == len(ok) + 1
    assert out["reserve"] == 46.0
    assert out["settings"]["reserve_pct"] == 46 and out["seq"] == 17


def test_a_reserved_slot_cannot_be_taken_while_the_command_is_persisted(tmp_path):
    # another thread (a technician's helper) fills the inbox while the
    # command writes its seq: the command still gets its slot, nothing drops
    out = run_mp("commands_cases", "reserved_slot", *setup(tmp_path, [cmd("set_mode", {"mode": "idle"}, 5)])).json()
    assert out["res"][0]["ok"] is True
    assert out["others"] == 15 and out["full"] == 0  # refused, not dropping another
    assert out["dropped"] == 0 and out["applied"] == 16 and out["mode"] == "idle"


def test_technician_helpers_wait_for_room_and_factory_reset_narrows_the_checks(tmp_path):
    # remote settings in effect: reserve 25 %, departure 85 %; the site
    # config says 30 % and 80 %
    payloads = [cmd("set_reserve", {"pct": 82}, 10), cmd("set_departure", {"time": "07:30", "soc_pct": 27}, 11),
                cmd("set_reserve", {"pct": 50}, 12), cmd("set_departure", {"time": "07:30", "soc_pct": 60}, 13)]
    out = run_mp("commands_cases", "technician_helpers",
                 *setup(tmp_path, payloads, {"reserve_pct": 25, "departure": [450, 85]})).json()
    assert out["dropped"] == 0
    assert out["applied"] == 16 + 2 + 2  # the pauses, two resumes, two accepted commands
    assert out["gone"]
    # until the restart the loop keeps 25/85, after it 30/80: a command must fit both
    assert [(r["ok"], r["error"]) for r in out["res"]] == [(False, "bad_args"), (False, "bad_args"),
                                                          (True, None), (True, None)], out["res"]


def test_each_command_is_checked_against_the_settings_as_they_will_be(tmp_path):
    until = int(time.time()) + 3600
    payloads = [cmd("set_departure", {"time": "07:30", "soc_pct": 50}, 1),
                cmd("set_reserve", {"pct": 60}, 2),  # above the departure just accepted
                cmd("set_reserve", {"pct": 45}, 3),
                cmd("set_departure", {"time": "08:00", "soc_pct": 40}, 4),  # below the reserve just accepted
                cmd("dispatch", {"ev_w": -7000, "until": until}, 5)]
    out = run_mp("commands_cases", "settings_as_they_will_be", *setup(tmp_path, payloads)).json()
    res = out["res"]
    assert [r["ok"] for r in res] == [True, False, True, False, True]
    assert res[1]["error"] == "bad_args" and res[3]["error"] == "bad_args"
    assert out["loop_reserve"] == 30.0  # no tick yet: the loop still has the old one
    assert "stops at reserve 45 %" in res[4]["detail"]
    assert out["will"]["reserve_pct"] == 45 and out["will"]["departure"] == [450, 50]


def test_the_checks_start_from_the_saved_settings(tmp_path):
    payloads = [cmd("set_reserve", {"pct": 60}, 1), cmd("set_reserve", {"pct": 50}, 2)]
    out = run_mp("commands_cases", "saved_settings", *setup(tmp_path, payloads, {"departure": [450, 50]})).json()
    assert [r["ok"] for r in out] == [False, True]


def test_hostile_but_signed_bodies_keep_their_id(tmp_path):
    now = int(time.time())
    exp = now + 600
    good = {"id": "f", "seq": 8, "exp": exp, "op": "set_reserve", "args": {"pct": 40}}

    def body(**kw):
        b = dict(good)
        b.update(kw)
        return json.dumps(b)

    def keys(n):  # a body of n keys in all (the 5 fields and "pct" are 6)
        return json.dumps({**good, **{f"k{i}": i for i in range(n - 6)}})

    head = f'{{"id": "f", "seq": 8, "exp": {exp}, "op": "set_reserve", '
    cases = [  # (payload, error or None for ok, id in the result)
        # a key twice in one object: whichever would win, refused
        (signed_text(f'{{"id": "f", "seq": 8, "seq": 9, "exp": {exp}, "op": "set_reserve", "args": {{"pct": 40}}}}'),
         "bad_payload", "f"),
        (signed_text(head + '"args": {"pct": 40, "pct": 99}}'), "bad_payload", "f"),
        (signed_text(head + '"args": {"pct": 40, "p\\u0063t": 9}}'), "bad_payload", "f"),  # escaped, same key
        (signed_text(head + '"args": {"pct": 40}, "op": "nope"}'), "bad_payload", "f"),
        (b'{"body": %s, "sig": %s, "sig": "00"}' % (json.dumps(body()).encode(), json.dumps(sign(KEY, body())).encode()),
         "bad_payload", None),
        # not twice: the same name at another level, or in sibling objects
        (signed_text(body(args={"pct": 40, "id": "f"})), "bad_args", "f"),
        (signed_text(body(args={"pct": [{"a": 1}, {"a": 1}]})), "bad_args", "f"),
        # unsigned: the signature is checked first, with the id kept
        (json.dumps({"body": body(), "sig": "00" * 32}).encode(), "bad_sig", "f"),
        (json.dumps({"body": head + '"args": {"pct": 40, "pct": 99}}', "sig": "00" * 32}).encode(), "bad_sig", "f"),
        # floats where integers go
        (signed_text(body(seq=8.0)), "bad_payload", "f"),
        (signed_text(body(exp=float(exp))), "bad_payload", "f"),
        (signed_text(body(op="dispatch", args={"ev_w": -1000.0, "until": now + 60})), "bad_args", "f"),
        (signed_text(body(op="dispatch", args={"ev_w": -1000, "until": now + 60.0})), "bad_args", "f"),
        # at most 64 keys, counted before parsing (they cost heap)
        (signed_text(keys(65)), "bad_payload", None),
        (signed_text(keys(64)), None, "f"),  # seq 8 accepted
        # seq bounded: 2**53 - 1 at most, so one command cannot lock out all later ones
        (signed_text(body(seq=2**63)), "bad_payload", "f"),
        (signed_text(body(seq=2**53)), "bad_payload", "f"),
        (signed_text(body(seq=2**53 - 1, args={"pct": 41})), None, "f"),
        (signed_text(body(seq=2**53 - 1, args={"pct": 42})), "replay", "f"),
        (signed_text(body(seq=2**53)), "bad_payload", "f"),
        (signed_text(body(exp=now - 5)), "replay", "f"),
        # ids that cannot be kept
        (signed_text(body(id="x" * 37)), "bad_payload", None),
        (signed_text(body(id=5)), "bad_payload", None),
        (signed_text(body(id="")), "bad_payload", ""),
    ]
    out = run_mp("commands_cases", "hostile_bodies", *setup(tmp_path, [c[0] for c in cases])).json()
    got = [(r["error"], r["id"]) for r in out["res"]]
    want = [(c[1], c[2]) for c in cases]
    assert got == want, [(i, g, w, r["detail"]) for i, (g, w, r) in enumerate(zip(got, want, out["res"])) if g != w]
    assert out["seq"] == 2**53 - 1
    assert out["scan"] is None and out["len"] > 500 and out["alloc"] == 0
