"""Links are parsed once, in config (issue 11 item 5), and the firmware's
layering holds: config -> board -> hal/ -> drivers (can/, modbus, sunspec),
no import going back up.

inverter.link and vehicle.link stay in the validated config as written (the
CONTRACT's meaning); next to each, link_parsed holds what board.py and hal/
switch on: ("uart",) | ("tcp", HOST, PORT) and None | ("can",) |
("slcan_pty", PATH) | ("slcan_tcp", HOST, PORT)."""
import ast
import copy
import json
import os
import socket

import pytest

from conftest import ROOT, run_mp
from test_config import test_make_run_with_bad_config_exits_2_with_one_line as exits_2_with_one_line

V2G = ROOT / "firmware" / "v2g"
BASE = json.loads((ROOT / "examples" / "site.json").read_text())


# ------------------------------------------------------------ the import graph


def _module_name(path):
    rel = path.relative_to(V2G.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name):
    p = V2G.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


def _imports(path):
    """Every v2g module the file imports, at the top or inside a function."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # "from v2g import board" imports the module v2g.board
            names = [base + "." + a.name if _is_module(base + "." + a.name) else base for a in node.names]
        else:
            continue
        found.update(n for n in names if n == "v2g" or n.startswith("v2g."))
    return found - {me}


def import_graph():
    return {_module_name(p): _imports(p) for p in sorted(V2G.rglob("*.py"))}


def _layer(mod):
    if mod.startswith("v2g.can"):
        return "can"
    if mod.startswith("v2g.hal"):
        return "hal"
    return mod


def test_the_import_graph_is_read():
    g = import_graph()
    # the parser sees top-level and function-level imports alike
    assert "v2g.can.slcan" in g["v2g.hal.can_build"]
    assert "v2g.hal.tcpstream" in g["v2g.board"]
    assert "v2g.modbus" in g["v2g.sunspec"]
    assert {"v2g.hal.can_build", "v2g.board"} <= g["v2g.app"]


def test_hal_and_drivers_import_nothing_above_them():
    above = {"v2g.board", "v2g.config"}
    bad = []
    for mod, deps in import_graph().items():
        layer = _layer(mod)
        if layer in ("hal", "can", "v2g.modbus", "v2g.sunspec", "v2g.sunspec_points"):
            bad += [(mod, d) for d in deps & above]
        if layer in ("can", "v2g.modbus", "v2g.sunspec", "v2g.sunspec_points"):
            bad += [(mod, d) for d in deps if d.startswith("v2g.hal")]
    assert bad == []


def test_board_and_config_stay_in_their_layers():
    g = import_graph()
    # board builds hal objects and never reads the config's parser back
    assert "v2g.config" not in g["v2g.board"]
    # config is the top of this stack: it imports none of the layers below
    assert not {d for d in g["v2g.config"] if d == "v2g.board" or _layer(d) in ("hal", "can")}


# ------------------------------------------------------------ parsed links


def with_links(inverter=None, vehicle=None, **extra):
    c = copy.deepcopy(BASE)
    if inverter is not None:
        c["inverter"]["link"] = inverter
    if vehicle is not None:
        c["vehicle"] = {"driver": "chademo", "link": vehicle}
    for k, v in extra.items():
        c[k] = v
    return c


def parse(tmp_path, configs=(), links=()):
    p = tmp_path / "cases.json"
    p.write_text(json.dumps({"configs": list(configs), "links": [list(x) for x in links]}))
    return run_mp("links_parse", p).json()


GOOD = [
    (with_links("uart"), ["uart", ["uart"]], [None, None]),
    (with_links("tcp:127.0.0.1:1502"), ["tcp:127.0.0.1:1502", ["tcp", "127.0.0.1", 1502]], [None, None]),
    (with_links("tcp:rs485-gw.local:502", "can"), ["tcp:rs485-gw.local:502", ["tcp", "rs485-gw.local", 502]],
     ["can", ["can"]]),
    (with_links(vehicle="slcan:/dev/ttyACM0"), None, ["slcan:/dev/ttyACM0", ["slcan_pty", "/dev/ttyACM0"]]),
    # a PATH may hold colons (udev by-id names): all of it after "slcan:" is the path
    (with_links(vehicle="slcan:/dev/serial/by-id/usb-x:1.0"), None,
     ["slcan:/dev/serial/by-id/usb-x:1.0", ["slcan_pty", "/dev/serial/by-id/usb-x:1.0"]]),
    (with_links(vehicle="slcan-tcp:127.0.0.1:20108"), None,
     ["slcan-tcp:127.0.0.1:20108", ["slcan_tcp", "127.0.0.1", 20108]]),
]


def test_each_link_form_is_parsed_next_to_its_string(tmp_path):
    got = parse(tmp_path, [c for c, _, _ in GOOD])["configs"]
    for (cfg, inv, veh), g in zip(GOOD, got):
        assert "error" not in g, g
        if inv is not None:
            assert g["inverter"] == inv
        else:
            assert g["inverter"][0] == cfg["inverter"]["link"]
        assert g["vehicle"] == veh


BAD = [
    # (config, key path, words of the rule): the same messages as before
    (with_links("tcp:host"), "inverter.link", 'must be "HOST:PORT"'),
    (with_links("tcp:host:0"), "inverter.link", "port must be 1..65535"),
    (with_links("tcp::502"), "inverter.link", 'must be "HOST:PORT"'),
    (with_links("serial"), "inverter.link", 'must be "uart" or "tcp:HOST:PORT"'),
    (with_links(7), "inverter.link", 'must be "uart" or "tcp:HOST:PORT"'),
    (with_links(vehicle="vcan0"), "vehicle.link", 'must be "can", "slcan:PATH" or "slcan-tcp:HOST:PORT"'),
    (with_links(vehicle="slcan:"), "vehicle.link", "slcan:PATH"),
    (with_links(vehicle="slcan-tcp:127.0.0.1:65536"), "vehicle.link", "port must be 1..65535"),
    (with_links(vehicle="slcan-tcp:127.0.0.1"), "vehicle.link", 'must be "HOST:PORT"'),
]


def test_bad_links_name_the_key(tmp_path):
    got = parse(tmp_path, [c for c, _, _ in BAD])["configs"]
    for (_, key, words), g in zip(BAD, got):
        assert g["error"].startswith(key + ": ") and words in g["error"], (key, g)


def test_a_parsed_link_cannot_be_given_in_the_config(tmp_path):
    c = with_links()
    c["inverter"]["link_parsed"] = ["tcp", "10.0.0.1", 502]
    v = with_links(vehicle="can")
    v["vehicle"]["link_parsed"] = ["can"]
    got = parse(tmp_path, [c, v])["configs"]
    assert got == [{"error": "inverter.link_parsed: unknown key"}, {"error": "vehicle.link_parsed: unknown key"}]


def test_parse_link_for_tools_and_tests(tmp_path):
    got = parse(tmp_path, links=[("inverter.link", "tcp:h:1"), ("vehicle.link", "slcan-tcp:h:2"),
                                 ("vehicle.link", "slcan:/dev/pts/3"), ("vehicle.link", "can"),
                                 ("inverter.link", "uart"), ("vehicle.link", "tcp:h:1")])["links"]
    assert got == [["tcp", "h", 1], ["slcan_tcp", "h", 2], ["slcan_pty", "/dev/pts/3"], ["can"], ["uart"],
                   {"error": 'vehicle.link: must be "can", "slcan:PATH" or "slcan-tcp:HOST:PORT"'}]


def _vehicle(link):
    return lambda c: c.update(vehicle={"driver": "chademo", "link": link})


@pytest.mark.parametrize("mut,expect", [
    (lambda c: c["inverter"].update(link="serial"), 'config error: inverter.link: must be "uart" or "tcp:HOST:PORT"'),
    (_vehicle("slcan-tcp:127.0.0.1:0"), "config error: vehicle.link: port must be 1..65535"),
    (_vehicle("slcan-tcp:127.0.0.1"), 'config error: vehicle.link: must be "HOST:PORT"'),
    (_vehicle("socketcan:can0"), 'config error: vehicle.link: must be "can", "slcan:PATH"'),
    (_vehicle("slcan:"), 'config error: vehicle.link: must be "can", "slcan:PATH"'),
    # checked against the board: the unix port has no CAN controller
    (_vehicle("can"), 'config error: vehicle.link: board "unix_sim" has no CAN controller'),
])
def test_make_run_with_a_bad_link_exits_2_naming_the_key(tmp_path, mut, expect):
    # test_config's check: exit 2, that one line on stderr, no traffic to the inverter
    exits_2_with_one_line(tmp_path, mut, expect)


# ------------------------------------------------------------ board and hal build from the parsed links


def build(tmp_path, cfg):
    p = tmp_path / "site.json"
    p.write_text(json.dumps(cfg))
    return run_mp("links_build", p, ROOT / "board_configs").json()


REFUSED = ["inverter.link_parsed: serial", "vehicle.link_parsed: vcan"]


def test_slcan_tcp_stream_is_opened_by_hal_and_injected(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    got = build(tmp_path, with_links("tcp:127.0.0.1:1502", f"slcan-tcp:127.0.0.1:{port}"))
    conn, _ = srv.accept()
    conn.settimeout(5)
    setup = b""
    while setup.count(b"\r") < 3:
        setup += conn.recv(64)
    conn.close()
    srv.close()
    assert got["stream"] == ["TcpStream", "127.0.0.1", 1502, None]
    assert got["bus"] == ["SlcanBus", "active", "TcpStream"]
    assert setup.startswith(b"C\rS6\rO\r")
    assert got["refused"] == REFUSED


def test_slcan_pty_link_opens_the_tty(tmp_path):
    master, slave = os.openpty()
    try:
        got = build(tmp_path, with_links(vehicle="slcan:" + os.ttyname(slave)))
        os.set_blocking(master, False)
        setup = os.read(master, 64)
    finally:
        os.close(master)
        os.close(slave)
    assert got["bus"] == ["SlcanBus", "active", "PtyStream"]
    assert setup.startswith(b"C\rS6\rO\r")
    assert got["refused"] == REFUSED


def test_no_vehicle_link_builds_no_bus(tmp_path):
    got = build(tmp_path, with_links("tcp:localhost:1502"))
    assert got["stream"] == ["TcpStream", "localhost", 1502, None] and "bus" not in got
