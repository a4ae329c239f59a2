"""SLCAN host (firmware/v2g/can/slcan.py) on the unix port, over real ptys
and sockets.

Who plays what: the firmware is an SLCAN *host* (it sends "C", "S6", "O" and
"t..." lines). So is python-can's `slcan` interface. The tests therefore use
two peers:
- AdapterEmulator (below): a small test-side SLCAN *adapter* on a pty master,
  answering commands like a USB adapter would ("\\r" OK, "z"/"Z" acks, BEL
  for errors) and injecting the bus's frames, plus every kind of garbage;
- python-can's real slcanBus on a second pty, joined to the firmware's by
  tools.sim.vehicle.PtyBridge (a null-modem): two hosts on one line see each
  other's frames as a two-node CAN bus. Frames must survive python-can's own
  formatter and parser in both directions.
"""
import json
import os
import random
import socket
import termios
import threading
import time
import tty

import pytest

from conftest import start_mp
from tools.sim.vehicle import PtyBridge


class AdapterEmulator:
    """A Lawicel adapter on a pty master; the firmware opens `path`."""

    def __init__(self, reply=True):
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave, termios.TCSANOW)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)
        self.reply = reply
        self.commands = []  # lines the host sent, without CR
        self.opened = threading.Event()
        self._buf = b""
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _answer(self, line):
        if not self.reply:
            return
        c = line[:1]
        if c in (b"C", b"O", b"L") or (c == b"S" and len(line) == 2):
            self.feed(b"\r")
        elif c == b"t" or c == b"r":
            self.feed(b"z\r")
        elif c == b"T" or c == b"R":
            self.feed(b"Z\r")
        elif c == b"F":
            self.feed(b"F00\r")
        else:
            self.feed(b"\a")

    def _run(self):
        import select

        while not self._stop.is_set():
            r, _, _ = select.select([self.master], [], [], 0.05)
            if not r:
                continue
            try:
                data = os.read(self.master, 4096)
            except (BlockingIOError, OSError):
                continue
            self._buf += data
            while b"\r" in self._buf:
                line, self._buf = self._buf.split(b"\r", 1)
                self.commands.append(line.decode("ascii", "replace"))
                self._answer(line)
                if line in (b"O", b"L"):
                    self.opened.set()

    def feed(self, data):
        while data:
            try:
                n = os.write(self.master, data)
                data = data[n:]
            except BlockingIOError:
                time.sleep(0.001)

    def hang_up(self):
        self._stop.set()
        self._t.join(2)
        os.close(self.master)
        os.close(self._slave)

    def close(self):
        if not self._stop.is_set():
            self.hang_up()


@pytest.fixture
def adapter():
    made = []

    def make(**kw):
        a = AdapterEmulator(**kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.close()


def start_mpy(case, *args):
    """A case of host_tests/mp/can_slcan_cases.py, running."""
    return start_mp("can_slcan_cases", case, *args)


def finish(proc, timeout=30):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"micropython exited {proc.returncode}\n{out}\n{err}"
    return json.loads(out.strip().splitlines()[-1])


# ------------------------------------------------------------ adapter emulator


GARBAGE = [
    b"t1008010203040506070\r",  # 8 bytes declared, 7.5 given
    b"t1FF\r",  # too short
    b"xyz\r",  # not a command
    b"t8001AA\r",  # standard ID above 0x7FF
    b"t100900000000000000000000\r",  # DLC 9
    b"T200000002AABB\r",  # extended ID above 0x1FFFFFFF
    b"t10G2AABB\r",  # not hex
    b"A" * 100 + b"\r",  # overlong line
    b"t1002AA\aBB\r",  # a BEL inside a frame: nack + noise, then "BB" is noise too
]
GARBAGE_ERRORS = 10
GARBAGE_NACKS = 1

VALID = [
    (b"t10280102030405060708\r", [0x102, False, False, 8, "0102030405060708"]),
    (b"T1234567F2AABB\r", [0x1234567F, True, False, 2, "aabb"]),
    (b"t1232ABCD1A2B\r", [0x123, False, False, 2, "abcd"]),  # with a timestamp
    (b"r1238\r", [0x123, False, True, 8, None]),
    (b"t7ff0\r", [0x7FF, False, False, 0, ""]),  # lower-case hex
    (b"R1FFFFFFF4\r", [0x1FFFFFFF, True, True, 4, None]),
]
REPLIES = [b"V1013\r", b"N1234\r", b"F00\r", b"\r", b"z\r", b"Z\r", b"\a"]


def test_setup_transmit_receive_and_garbage_against_adapter(adapter):
    a = adapter()
    proc = start_mpy("transmit_receive_garbage", a.path)
    assert a.opened.wait(10), "the host opened the adapter"
    time.sleep(0.2)
    stream = b""
    for i, (line, _) in enumerate(VALID):
        stream += GARBAGE[i % len(GARBAGE)] + REPLIES[i % len(REPLIES)] + line
    for g in GARBAGE[len(VALID):]:
        stream += g
    stream += REPLIES[-1]
    a.feed(stream)
    res = finish(proc)
    assert a.commands[:3] == ["C", "S6", "O"], "set-up: close, 500 kbit/s, open"
    assert a.commands[3:6] == ["t108801F4010FB3010000", "T1ABCDEF52AABB", "t7FF0"]
    assert res["sent"] == [True, True, True]
    got = res["got"]
    assert len(got) == 6
    for (_, want), g in zip(VALID, got):
        if want[4] is None:  # remote frame: no data
            assert g[:4] == want[:4]
        else:
            assert g == want
    c = res["c"]
    assert c["errors"] == GARBAGE_ERRORS
    # the adapter's three set-up OKs and three acks are skipped; BELs counted
    assert c["nacks"] == GARBAGE_NACKS + 1
    assert res["extra"] == []
    assert c["rx"] == 6 and c["tx"] == 3 and c["state"] == "active"


def test_status_flags_and_filters(adapter):
    a = adapter()
    proc = start_mpy("status_flags_and_filters", a.path)
    assert a.opened.wait(10)
    time.sleep(0.4)
    # status reports: error warning, then error passive with a data overrun
    a.feed(b"F04\r")
    time.sleep(0.1)
    a.feed(b"t1011AA\rt1021BB\rt3001CC\rT000001021DD\rF28\rt2001EE\rt1021FF\r")
    res = finish(proc)
    assert "F" in a.commands
    assert res["states"][0] == "active"
    assert [g[0] for g in res["got"]] == [0x102, 0x200, 0x102], "filtered in software, extended IDs too"
    assert res["states"][2] == "passive"
    assert res["c"]["ovf"] == 1


def test_missing_device_starts_bus_off_and_recovers_nothing(tmp_path):
    proc = start_mpy("missing_device", str(tmp_path / "no-such-tty"))
    res = finish(proc)
    assert res["r"] == ["bus_off", False, False, "bus_off"]
    assert res["offs"] >= 1


def test_hang_up_is_bus_off(adapter):
    a = adapter()
    proc = start_mpy("hang_up", a.path)
    assert a.opened.wait(10)
    a.feed(b"t1001AA\r")
    time.sleep(0.5)
    a.hang_up()
    res = finish(proc)
    assert res["got"] == [[0x100, False, False, 1, "aa"]]
    assert res["state"] == "bus_off" and res["offs"] == 1 and res["send"] is False


# ------------------------------------------------------------ python-can


def test_round_trip_with_python_can_slcan():
    import can

    bridge = PtyBridge().start()
    pc = can.interface.Bus(interface="slcan", channel=bridge.car_path, bitrate=500000, sleep_after_open=0)
    try:
        proc = start_mpy("echo", bridge.fw_path)
        assert bridge.first_byte.wait(10)
        first = [pc.recv(5), pc.recv(5)]
        rnd = random.Random(7)
        sent = []
        for i in range(40):
            ext = i % 4 == 3
            cid = rnd.randrange(0x400) if not ext else rnd.randrange(0x10000000)
            data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(9)))
            pc.send(can.Message(arbitration_id=cid, data=data, is_extended_id=ext))
            sent.append((cid, ext, data))
        echoes = []
        t_end = time.monotonic() + 10
        while len(echoes) < 40 and time.monotonic() < t_end:
            m = pc.recv(0.5)
            if m is not None:
                echoes.append(m)
        res = finish(proc)
    finally:
        pc.shutdown()
        bridge.close()
    assert [(m.arbitration_id, m.is_extended_id, bytes(m.data)) for m in first] == [
        (0x108, False, bytes.fromhex("01f4010fb3010000")), (0x18DAF110, True, b"\x02\x10\x03")]
    assert len(echoes) == 40
    for (cid, ext, data), m in zip(sent, echoes):
        assert m.is_extended_id == ext
        assert m.arbitration_id == cid | (0x10000000 if ext else 0x400)
        assert bytes(m.data) == data
    c = res["c"]
    assert res["n"] == 40 and c["errors"] == 0, "python-can's own set-up lines are skipped, not errors"


# ------------------------------------------------------------ floods


def test_flood_at_full_bus_rate_with_garbage_allocates_nothing(adapter):
    """500 kbit/s carries about 4,000 8-byte frames per second. Two seconds
    of that, 2 % garbage lines mixed in, read under heap_lock."""
    a = adapter(reply=False)
    rate, seconds = 4000, 2.0
    total = int(rate * seconds)
    rnd = random.Random(3)
    lines, valid, bad = [], 0, 0
    for i in range(total):
        if i % 50 == 25:
            lines.append(rnd.choice(GARBAGE[:8]))
            bad += 1
        else:
            cid = rnd.choice((0x100, 0x101, 0x102, 0x200, 0x300))
            lines.append(b"t%03X8%s\r" % (cid, bytes(rnd.randrange(256) for _ in range(8)).hex().upper().encode()))
            valid += 1
    proc = start_mpy("flood", a.path, str(valid))
    assert a.opened.wait(10)
    # Feed only once the reader is in its counting loop: a frame that arrived
    # during the warm-up calls above would be read there and never counted
    # (a reader slow to start, e.g. on a busy machine, lost the first ones).
    assert proc.stdout.readline() == "ready\n", "the reader warmed up"
    batch = rate // 100  # 10 ms worth of frames at a time
    t_next = time.monotonic()
    for i in range(0, total, batch):
        a.feed(b"".join(lines[i:i + batch]))
        t_next += 0.01
        time.sleep(max(0.0, t_next - time.monotonic()))
    res = finish(proc, timeout=40)
    assert res["r"] == "ok", "no allocation while flooded"
    assert res["n"] == valid, "every valid frame arrived"
    assert res["c"]["errors"] == bad
    assert res["ms"] < 8000, "kept up with the bus (plus start-up)"


# ------------------------------------------------------------ TCP


def test_tcp_link_loss_and_recover():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)
    port = srv.getsockname()[1]
    seen = []

    def serve():
        for i in range(2):
            c, _ = srv.accept()
            buf = b""
            c.settimeout(5)
            while buf.count(b"\r") < 3:
                buf += c.recv(100)
            seen.append(buf)
            c.sendall(b"\r\r\rt10%d1%02X\r" % (i, i))
            time.sleep(0.3)
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    proc = start_mpy("tcp_loss_and_recover", str(port))
    res = finish(proc)
    t.join(5)
    srv.close()
    assert seen == [b"C\rS6\rO\r", b"C\rS6\rO\r"], "set-up sent again after recover()"
    assert res["out"] == [[[[0x100, False, False, 1, "00"]], "bus_off"],
                          [[[0x101, False, False, 1, "01"]], "bus_off"]]
    assert res["offs"] == 2


# ------------------------------------------------------------ hal.can_build


def test_vehicle_bus_builds_slcan_links(adapter):
    a = adapter()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    port = srv.getsockname()[1]
    proc = start_mpy("vehicle_bus_links", a.path, str(port))
    conn, _ = srv.accept()
    conn.settimeout(5)
    setup = b""
    while setup.count(b"\r") < 3:
        setup += conn.recv(64)
    res = finish(proc)
    conn.close()
    srv.close()
    assert a.opened.wait(5) and a.commands[:3] == ["C", "S6", "O"]
    assert setup == b"C\rS6\rO\r"
    assert res == ["SlcanBus", "active", "SlcanBus", "active"]
