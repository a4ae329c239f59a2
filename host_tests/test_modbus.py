"""Modbus RTU master (firmware/v2g/modbus.py) and its streams, on the unix port.

- CRC against the published, re-verified frames in the shared reference.
- Encoding/decoding against those frames through a scripted fake stream.
- Every kind of bad answer is typed, bounded by retries, and never accepted.
- Rs485 drives DE high exactly around writes (fake UART and pin).
- Real peer: a pymodbus RTU-over-TCP server in its own process, including the
  server dying mid-run and a new one coming back on the same port.
"""
import json
import random
import re
import subprocess

import pytest

from conftest import MICROPYTHON, REFERENCE, ROOT, mp_env
from tools.bench_modbus import REG_COUNT, UNIT, ServerProcess, free_port, holding_value, input_value

VECTORS_FILE = REFERENCE / "modbus" / "crc_vectors_verified.txt"


# ------------------------------------------------------------ host helpers


def crc_ref(data):
    """Bitwise CRC-16/MODBUS, independent of the firmware's table."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(data):
    data = bytes(data)
    crc = crc_ref(data)
    return data + bytes([crc & 0xFF, crc >> 8])


def load_vectors():
    frames = []
    for line in VECTORS_FILE.read_text().splitlines():
        m = re.match(r"OK\s+((?:[0-9A-Fa-f]{2} )*[0-9A-Fa-f]{2})\s+(.*)", line)
        if m:
            frames.append((bytes.fromhex(m.group(1)), m.group(2).strip()))
    return frames


def kind(frame):
    """What a published frame is, judged from its structure alone."""
    fc, size = frame[1], len(frame)
    if fc & 0x80:
        return "exception"
    if fc in (3, 4):
        return "request" if size == 8 else "response"  # responses are 5 + even
    if fc == 6:
        return "request"  # the normal response is the same frame (echo)
    if fc == 16:
        return "request" if size > 8 else "response"
    return "other"


VECTORS = load_vectors()

# MicroPython side: a scripted stream and a runner that turns every outcome
# into JSON, so each test states its intent in plain Python below.
PRELUDE = r"""
import json, time
from v2g import modbus as M

class Script:
    # Each write() queues the next canned reply (b'' = silence); readinto hands
    # out `chunk` bytes at a time (0 = all that is queued).
    def __init__(self, replies, chunk=0):
        self.replies = list(replies)
        self.chunk = chunk
        self.written = []
        self.pending = b''
    def write(self, buf):
        self.written.append(bytes(buf).hex())
        self.pending = self.replies.pop(0) if self.replies else b''
        return len(buf)
    def readinto(self, mv):
        n = min(len(mv), len(self.pending))
        if self.chunk:
            n = min(n, self.chunk)
        mv[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n
    def wait(self, timeout_ms):
        if self.pending:
            return True
        time.sleep_ms(timeout_ms)
        return False
    def discard(self):
        self.pending = b''

def arg(a):
    return bytes.fromhex(a["hex"]) if isinstance(a, dict) else a

def run_case(c):
    s = Script([bytes.fromhex(h) for h in c["replies"]], c.get("chunk", 0))
    m = M.RtuMaster(s, c["unit"], timeout_ms=c.get("timeout_ms", 30), retries=c.get("retries", 2),
                    baud=c.get("baud"))
    out = {"ok": False}
    try:
        r = getattr(m, c["call"])(*[arg(a) for a in c["args"]])
        out = {"ok": True, "data": bytes(r).hex() if r is not None else None}
    except M.LinkLost as e:
        out["err"] = "LinkLost"
        out["cause"] = type(e.cause).__name__
        out["text"] = str(e.cause)
        if isinstance(e.cause, M.ModbusExceptionResponse):
            out["code"] = e.cause.code
    except M.ModbusExceptionResponse as e:
        out.update(err="ModbusExceptionResponse", fc=e.fc, code=e.code, name=e.name)
    except M.ModbusError as e:
        out.update(err=type(e).__name__, text=str(e))
    except ValueError as e:
        out.update(err="ValueError", text=str(e))
    out["written"] = s.written
    for k in ("transactions", "tx_bytes", "rx_bytes", "errors", "exceptions", "retries_used", "last_error"):
        out[k] = getattr(m, k)
    return out
"""


def run_cases(mpy, cases):
    code = PRELUDE + "\nCASES = json.loads(%r)\nprint(json.dumps([run_case(c) for c in CASES]))\n" % json.dumps(cases)
    return mpy(code).json()


def run_case(mpy, **case):
    case.setdefault("args", [])
    return run_cases(mpy, [case])[0]


# ------------------------------------------------------------ CRC


def test_vectors_file_parsed():
    assert len(VECTORS) == 32
    for frame, desc in VECTORS:
        assert crc_ref(frame) == 0, desc  # the reference helper itself is right


def test_crc_of_every_published_frame(mpy):
    frames = [f.hex() for f, _ in VECTORS]
    res = mpy(
        "import json\nfrom v2g.modbus import crc16\n"
        "F = [bytes.fromhex(h) for h in %r]\n"
        "print(json.dumps([[crc16(f[:-2]), crc16(f), crc16(f, len(f) - 2)] for f in F]))" % frames
    ).json()
    for (frame, desc), (body_crc, whole_crc, prefix_crc) in zip(VECTORS, res):
        wire = frame[-2] | frame[-1] << 8  # low byte first on the wire
        assert body_crc == wire, desc
        assert prefix_crc == wire, desc
        assert whole_crc == 0, desc


def test_crc_check_value_and_pymodbus_example(mpy):
    res = mpy(
        "import json\nfrom v2g.modbus import crc16\n"
        "r = [crc16(b'123456789'), crc16(bytes.fromhex('1234234534564567')), crc16(b''),\n"
        "     crc16(memoryview(b'xx123456789')[2:]), crc16(bytearray(b'123456789'))]\n"
        "for n in (-1, 10):\n"
        "    try:\n"
        "        crc16(b'123456789', n)\n"
        "        r.append('no error')\n"
        "    except ValueError:\n"
        "        r.append('ValueError')\n"
        "print(json.dumps(r))"
    ).json()
    # pymodbus' compute_CRC returns 0xE2DB for the second one: byte-swapped.
    assert res == [0x4B37, 0xDBE2, 0xFFFF, 0x4B37, 0x4B37, "ValueError", "ValueError"]


# ------------------------------------------------------------ encoding / decoding


def _request_case(frame):
    unit, fc = frame[0], frame[1]
    addr = frame[2] << 8 | frame[3]
    if fc in (3, 4):
        qty = frame[4] << 8 | frame[5]
        reply = with_crc([unit, fc, 2 * qty] + [0] * (2 * qty))
        return dict(unit=unit, call="read_holding" if fc == 3 else "read_input",
                    args=[addr, qty], replies=[reply.hex()])
    if fc == 6:
        value = frame[4] << 8 | frame[5]
        return dict(unit=unit, call="write_single", args=[addr, value], replies=[frame.hex()])
    data = frame[7:-2]
    return dict(unit=unit, call="write_multiple", args=[addr, {"hex": data.hex()}],
                replies=[with_crc(frame[:6]).hex()])


def test_published_requests_are_produced_byte_exact(mpy):
    requests = [f for f, _ in VECTORS if kind(f) == "request"]
    assert len(requests) == 13  # 6x FC03, 1x FC04, 4x FC06, 2x FC16
    cases = [_request_case(f) for f in requests]
    # FC16 once more with the registers as a list of ints.
    fc16 = [f for f in requests if f[1] == 16]
    for f in fc16:
        regs = [f[7 + 2 * i] << 8 | f[8 + 2 * i] for i in range((len(f) - 9) // 2)]
        cases.append(dict(_request_case(f), args=[f[2] << 8 | f[3], regs]))
    for frame, res in zip(requests + fc16, run_cases(mpy, cases)):
        assert res["ok"], (frame.hex(), res)
        assert res["written"] == [frame.hex()]
        assert res["tx_bytes"] == len(frame)
        assert res["errors"] == 0 and res["retries_used"] == 0


def test_published_responses_decode(mpy):
    cases, expect = [], []
    for frame, desc in VECTORS:
        if kind(frame) != "response" or frame[0] == 0:
            continue
        unit, fc = frame[0], frame[1]
        if fc in (3, 4):
            cases.append(dict(unit=unit, call="read_holding" if fc == 3 else "read_input",
                              args=[0, frame[2] // 2], replies=[frame.hex()]))
            expect.append(frame[3:-2].hex())
        else:  # FC16: start and quantity come back
            addr, qty = frame[2] << 8 | frame[3], frame[4] << 8 | frame[5]
            cases.append(dict(unit=unit, call="write_multiple", args=[addr, [0] * qty],
                              replies=[frame.hex()]))
            expect.append(None)
    assert len(cases) == 7
    for case, want, res in zip(cases, expect, run_cases(mpy, cases)):
        assert res["ok"], (case, res)
        assert res["data"] == want
        assert len(res["written"]) == 1


def test_responses_that_do_not_answer_the_request_are_rejected(mpy):
    by_hex = {f.hex(): f for f, _ in VECTORS}
    unit0 = "000304008d008efabc"  # a response from unit 0: never ours
    fc01 = "0201010051cc"  # a read-coils answer to a holding read
    assert unit0 in by_hex and fc01 in by_hex
    cases = [
        dict(unit=0x11, call="read_holding", args=[0, 2], replies=[unit0] * 3),
        dict(unit=0x02, call="read_holding", args=[0, 1], replies=[fc01] * 3),
    ]
    for res in run_cases(mpy, cases):
        assert not res["ok"]
        assert res["err"] == "LinkLost" and res["cause"] == "ModbusFrameError", res
        assert len(res["written"]) == 3


def test_published_exception_frames(mpy):
    exc = {f.hex(): f for f, _ in VECTORS if kind(f) == "exception"}
    assert len(exc) == 5
    cases = [
        # (frame, request that it answers)
        ("118302c134", dict(unit=0x11, call="read_holding", args=[0x7C, 2])),
        ("ff8302a101", dict(unit=0xFF, call="read_holding", args=[0x7C, 2])),
        ("0186030261", dict(unit=0x01, call="write_single", args=[0x07D1, 0x010F])),
    ]
    results = run_cases(mpy, [dict(c, replies=[h]) for h, c in cases])
    for (h, c), res, code in zip(cases, results, (2, 2, 3)):
        assert h in exc
        assert res["err"] == "ModbusExceptionResponse", res
        assert res["code"] == code and res["fc"] == exc[h][1] & 0x7F
        assert res["name"] == ("ILLEGAL_DATA_ADDRESS" if code == 2 else "ILLEGAL_DATA_VALUE")
        assert len(res["written"]) == 1  # a valid answer: not retried
        assert res["exceptions"] == 1 and res["errors"] == 0
    # An FC01 exception and one from unit 0 do not answer an FC03 request.
    assert "0a8102b053" in exc and "0083029131" in exc
    stray = run_cases(mpy, [
        dict(unit=0x0A, call="read_holding", args=[0, 1], replies=["0a8102b053"] * 3),
        dict(unit=0x11, call="read_holding", args=[0, 1], replies=["0083029131"] * 3),
    ])
    for res in stray:
        assert res["err"] == "LinkLost" and res["cause"] == "ModbusFrameError", res


def test_exception_names(mpy):
    names = mpy(
        "import json\nfrom v2g.modbus import ModbusExceptionResponse as E\n"
        "print(json.dumps([E(3, c).name for c in range(0, 13)]))"
    ).json()
    assert names[1:12] == [
        "ILLEGAL_FUNCTION", "ILLEGAL_DATA_ADDRESS", "ILLEGAL_DATA_VALUE", "SERVER_DEVICE_FAILURE",
        "ACKNOWLEDGE", "SERVER_DEVICE_BUSY", "NEGATIVE_ACKNOWLEDGE", "MEMORY_PARITY_ERROR",
        "UNKNOWN", "GATEWAY_PATH_UNAVAILABLE", "GATEWAY_TARGET_FAILED_TO_RESPOND",
    ]
    assert names[0] == names[12] == "UNKNOWN"


# ------------------------------------------------------------ line faults

GOOD = bytes.fromhex("1103 04 008D 008E FBBD".replace(" ", ""))  # published, 2 registers
assert crc_ref(GOOD) == 0

FAULTS = {
    "bad_crc": (GOOD[:-1] + bytes([GOOD[-1] ^ 0x01]), "ModbusCRCError"),
    "truncated": (GOOD[:-3], "ModbusFrameError"),
    "wrong_unit": (with_crc(b"\x12" + GOOD[1:-2]), "ModbusFrameError"),
    "wrong_fc": (with_crc(b"\x11\x04" + GOOD[2:-2]), "ModbusFrameError"),
    "wrong_byte_count": (with_crc(b"\x11\x03\x06" + GOOD[3:-2] + b"\x00\x00"), "ModbusFrameError"),
    "garbage": (bytes.fromhex("5aa5ff00137f0e55aa"), "ModbusFrameError"),
    "silence": (b"", "ModbusTimeout"),
    "exception_bad_crc": (bytes.fromhex("118302c135"), "ModbusCRCError"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_fault_is_typed_retried_then_link_lost(mpy, fault):
    bad, err = FAULTS[fault]
    lost, recovered = run_cases(mpy, [
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[bad.hex()] * 3),
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[bad.hex(), GOOD.hex()]),
    ])
    assert not lost["ok"]
    assert lost["err"] == "LinkLost" and lost["cause"] == err, lost
    assert len(lost["written"]) == 3  # first try + 2 retries, then no more
    assert lost["errors"] == 3 and lost["retries_used"] == 2 and lost["transactions"] == 1
    assert lost["last_error"]
    # A bad frame followed by a good one on the retry succeeds.
    assert recovered["ok"] and recovered["data"] == "008d008e"
    assert recovered["retries_used"] == 1 and recovered["errors"] == 1


def test_no_retries_means_one_attempt(mpy):
    res = run_case(mpy, unit=0x11, call="read_holding", args=[0, 2], replies=[""], retries=0)
    assert res["err"] == "LinkLost" and res["cause"] == "ModbusTimeout"
    assert len(res["written"]) == 1


def test_write_echo_mismatch_is_a_frame_error(mpy):
    single_ok = "110600011234"
    bad_echo = with_crc(bytes.fromhex("110600011235")).hex()
    bad_qty = with_crc(bytes.fromhex("111000010003")).hex()
    res = run_cases(mpy, [
        dict(unit=0x11, call="write_single", args=[1, 0x1234], replies=[bad_echo] * 3),
        dict(unit=0x11, call="write_multiple", args=[1, [1, 2]], replies=[bad_qty] * 3),
        dict(unit=0x11, call="write_single", args=[1, 0x1234], replies=[with_crc(bytes.fromhex(single_ok)).hex()]),
    ])
    for r in res[:2]:
        assert r["err"] == "LinkLost" and r["cause"] == "ModbusFrameError" and "echo" in r["text"], r
    assert res[2]["ok"]


def test_busy_and_acknowledge_are_retried_other_exceptions_not(mpy):
    busy = with_crc(bytes.fromhex("118306")).hex()
    ack = with_crc(bytes.fromhex("118305")).hex()
    failure = with_crc(bytes.fromhex("118304")).hex()
    res = run_cases(mpy, [
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[busy, GOOD.hex()], timeout_ms=5),
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[ack, busy, GOOD.hex()], timeout_ms=5),
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[busy] * 3, timeout_ms=5),
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[failure, GOOD.hex()], timeout_ms=5),
    ])
    assert res[0]["ok"] and res[0]["retries_used"] == 1
    assert res[1]["ok"] and res[1]["retries_used"] == 2
    assert res[2]["err"] == "LinkLost" and res[2]["cause"] == "ModbusExceptionResponse" and res[2]["code"] == 6
    assert res[3]["err"] == "ModbusExceptionResponse" and res[3]["code"] == 4
    assert len(res[3]["written"]) == 1


def test_garbage_never_yields_accepted_data(mpy):
    rng = random.Random(20240611)
    cases = []
    # Every single-bit error in a good response (CRC-16 catches them all).
    for i in range(len(GOOD) * 8):
        flipped = bytearray(GOOD)
        flipped[i // 8] ^= 1 << (i % 8)
        cases.append(bytes(flipped))
    # A garbage prefix in front of a good frame.
    for n in range(1, 12):
        cases.append(bytes(rng.randrange(256) for _ in range(n)) + GOOD)
    # Random frames that at least start like the answer we wait for.
    for _ in range(300):
        tail = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12)))
        cases.append(bytes([0x11, 0x03, 0x04]) + tail)
    cases = [c for c in cases if c != GOOD]
    results = run_cases(mpy, [
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[c.hex()], retries=0, timeout_ms=3)
        for c in cases
    ])
    accepted = [(c.hex(), r) for c, r in zip(cases, results) if r["ok"]]
    assert accepted == []
    assert all(r["err"] == "LinkLost" for r in results)


def test_garbage_does_not_poison_the_next_transaction(mpy):
    noisy = bytes.fromhex("00ff11") + GOOD
    res = run_case(mpy, unit=0x11, call="read_holding", args=[0x7C, 2], replies=[noisy.hex(), GOOD.hex()])
    assert res["ok"] and res["data"] == "008d008e" and res["retries_used"] == 1
    assert res["rx_bytes"] >= len(noisy) + len(GOOD)


def test_response_arriving_byte_by_byte(mpy):
    frame = bytes.fromhex("1103 06 AE41 5652 4340 49AD".replace(" ", ""))
    res = run_case(mpy, unit=0x11, call="read_holding", args=[0x6B, 3], replies=[frame.hex()], chunk=1)
    assert res["ok"] and res["data"] == "ae4156524340"


def test_argument_errors_are_value_errors_and_send_nothing(mpy):
    calls = [
        ("read_holding", [0, 0]), ("read_holding", [0, 126]), ("read_input", [-1, 1]),
        ("read_input", [65535, 2]), ("write_single", [65536, 1]), ("write_single", [0, 65536]),
        ("write_single", [0, -32769]), ("write_multiple", [0, [0] * 124]), ("write_multiple", [0, []]),
        ("write_multiple", [0, {"hex": "010203"}]), ("write_multiple", [0, [70000]]),
    ]
    results = run_cases(mpy, [dict(unit=1, call=c, args=a, replies=[]) for c, a in calls])
    for (call, args), res in zip(calls, results):
        assert res["err"] == "ValueError", (call, args, res)
        assert res["written"] == []
    res = mpy(
        "from v2g.modbus import RtuMaster\n"
        "for u in (0, 256, -1):\n"
        "    try:\n"
        "        RtuMaster(None, u)\n"
        "        print('accepted', u)\n"
        "    except ValueError:\n"
        "        print('rejected', u)\n"
    )
    assert res.lines() == ["rejected 0", "rejected 256", "rejected -1"]


def test_limits_are_accepted(mpy):
    full = with_crc([1, 3, 250] + [7] * 250).hex()
    res = run_cases(mpy, [
        dict(unit=1, call="read_holding", args=[65536 - 125, 125], replies=[full]),
        dict(unit=1, call="write_multiple", args=[0, [0xFFFF, -1] * 61 + [-32768]],
             replies=[with_crc(bytes.fromhex("01100000007b")).hex()]),
    ])
    assert res[0]["ok"] and res[0]["data"] == "07" * 250
    assert res[1]["ok"]
    assert res[1]["written"][0][14:22] == "ffffffff" and res[1]["written"][0][-8:-4] == "8000"


def test_read_into_callers_buffer(mpy):
    reply = with_crc(bytes.fromhex("110304008d008e"))
    out = mpy(PRELUDE + (
        "s = Script([bytes.fromhex(%r)])\n"
        "m = M.RtuMaster(s, 0x11)\n"
        "buf = bytearray(b'\\xee' * 6)\n"
        "v = m.read_holding(0x7C, 2, into=buf)\n"
        "print(json.dumps([bytes(v).hex(), buf.hex(), len(v)]))\n"
    ) % reply.hex()).json()
    assert out == ["008d008e", "008d008eeeee", 4]


def test_inter_frame_gap_from_baud(mpy):
    out = mpy(
        "import json\nfrom v2g.modbus import RtuMaster\n"
        "print(json.dumps([RtuMaster(None, 1, baud=b).t35_us for b in (9600, 19200, 38400, 115200, None)]))"
    ).json()
    assert out == [4011, 2006, 1750, 1750, 0]  # 3.5 chars of 11 bits; fixed above 19200


def test_t35_silence_kept_before_each_request(mpy):
    reply = GOOD.hex()
    out = mpy(PRELUDE + (
        "class Timed(Script):\n"
        "    def __init__(self, replies):\n"
        "        super().__init__(replies)\n"
        "        self.last_rx_us = None\n"
        "        self.gaps_us = []\n"
        "    def write(self, buf):\n"
        "        if self.last_rx_us is not None:\n"
        "            self.gaps_us.append(time.ticks_diff(time.ticks_us(), self.last_rx_us))\n"
        "        return super().write(buf)\n"
        "    def readinto(self, mv):\n"
        "        n = super().readinto(mv)\n"
        "        if n:\n"
        "            self.last_rx_us = time.ticks_us()\n"
        "        return n\n"
        "s = Timed([bytes.fromhex(%r)] * 3)\n"
        "m = M.RtuMaster(s, 0x11, baud=9600)\n"
        "for _ in range(3):\n"
        "    m.read_holding(0x7C, 2)\n"
        "print(json.dumps(s.gaps_us))\n"
    ) % reply).json()
    assert len(out) == 2 and min(out) >= 4011


def test_steady_state_read_allocates_nothing(mpy):
    reply = with_crc([17, 3, 100] + list(range(100)))
    out = mpy(
        "import micropython\n"
        "from v2g.modbus import RtuMaster\n"
        "class Replay:\n"
        "    # Hands out the same reply after every write, without allocating.\n"
        "    def __init__(self, reply):\n"
        "        self.reply = reply\n"
        "        self.pos = len(reply)\n"
        "    def write(self, buf):\n"
        "        self.pos = 0\n"
        "        return len(buf)\n"
        "    def readinto(self, mv):\n"
        "        n = min(len(self.reply) - self.pos, len(mv))\n"
        "        for i in range(n):\n"
        "            mv[i] = self.reply[self.pos + i]\n"
        "        self.pos += n\n"
        "        return n\n"
        "    def wait(self, timeout_ms):\n"
        "        return self.pos < len(self.reply)\n"
        "    def discard(self):\n"
        "        self.pos = len(self.reply)\n"
        "m = RtuMaster(Replay(bytes.fromhex(%r)), 17)\n"
        "def poll(n):\n"
        "    for _ in range(n):\n"
        "        m.read_holding(0, 50)\n"
        "poll(3)\n"
        "result = 'allocated'\n"
        "micropython.heap_lock()\n"
        "try:\n"
        "    poll(1000)\n"
        "    result = 'none'\n"
        "except MemoryError:\n"
        "    pass\n"
        "micropython.heap_unlock()\n"
        "print(result, m.transactions, bytes(m.read_holding(0, 50)[:4]).hex())\n" % reply.hex()
    )
    assert out.lines()[-1] == "none 1003 00010203"


# ------------------------------------------------------------ RS-485 stream

RS485_FAKES = r"""
import json, time
from v2g.hal.uart485 import Rs485

LOG = []

class FakePin:
    def __init__(self):
        self.v = None
    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        LOG.append(("de", v, time.ticks_us()))

class FakeUart:
    # rx: bytes that "arrive" at arrive_us after construction (or at once).
    def __init__(self, pin, with_flush=True, rx=b'', arrive_ms=0, short_write=False):
        self.pin = pin
        self.rx = bytearray(rx)
        self.t0 = time.ticks_ms()
        self.arrive_ms = arrive_ms
        self.short_write = short_write
        self.sent = bytearray()
        if with_flush:
            self.flush = self._flush
    def write(self, buf):
        LOG.append(("write", self.pin.v if self.pin else None, time.ticks_us()))
        if self.short_write:
            return None
        self.sent += buf
        return len(buf)
    def _flush(self):
        LOG.append(("flush", self.pin.v if self.pin else None, time.ticks_us()))
    def any(self):
        if time.ticks_diff(time.ticks_ms(), self.t0) < self.arrive_ms:
            return 0
        return len(self.rx)
    def readinto(self, buf, nbytes=None):
        n = min(len(buf), len(self.rx), nbytes if nbytes is not None else len(buf))
        if self.pin is not None:
            LOG.append(("read", self.pin.v, time.ticks_us()))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n
"""


def test_rs485_de_high_exactly_around_writes(mpy):
    out = mpy(RS485_FAKES + (
        "pin = FakePin()\n"
        "uart = FakeUart(pin)\n"
        "port = Rs485(uart, pin, baud=9600)\n"
        "n = port.write(b'\\x01\\x03\\x00\\x00\\x00\\x01\\x84\\x0a')\n"
        "print(json.dumps({'n': n, 'sent': uart.sent.hex(), 'log': LOG, 'char_us': port.char_us}))\n"
    )).json()
    log = out["log"]
    assert out["n"] == 8 and out["sent"] == "010300000001840a"
    assert [e[:2] for e in log] == [["de", 0], ["de", 1], ["write", 1], ["flush", 1], ["de", 0]]
    assert out["char_us"] == 1146  # 11 bits at 9600 baud, rounded up
    # After flush() the last character is still in the shift register: DE
    # stays up one more character time.
    assert log[4][2] - log[3][2] >= out["char_us"]


def test_rs485_without_flush_waits_the_frame_time(mpy):
    out = mpy(RS485_FAKES + (
        "pin = FakePin()\n"
        "port = Rs485(FakeUart(pin, with_flush=False), pin, de_active=0, baud=9600)\n"
        "port.write(bytes(8))\n"
        "print(json.dumps(LOG))\n"
    )).json()
    # de_active=0: the driver is enabled by a low level.
    assert [e[:2] for e in out] == [["de", 1], ["de", 0], ["write", 0], ["de", 1]]
    assert out[3][2] - out[1][2] >= 9 * 1146  # DE up for 8 bytes + one character


def test_rs485_write_failure_releases_the_bus(mpy):
    out = mpy(RS485_FAKES + (
        "pin = FakePin()\n"
        "port = Rs485(FakeUart(pin, short_write=True), pin)\n"
        "try:\n"
        "    port.write(b'abc')\n"
        "    print(json.dumps('no error'))\n"
        "except OSError:\n"
        "    print(json.dumps(pin.v))\n"
    )).json()
    assert out == 0


def test_rs485_auto_direction_and_reads(mpy):
    out = mpy(RS485_FAKES + (
        "uart = FakeUart(None, rx=b'hello world', arrive_ms=30)\n"
        "port = Rs485(uart, baud=115200)\n"
        "r = {'write': port.write(b'xyz')}\n"
        "buf = bytearray(5)\n"
        "r['before'] = port.readinto(buf)\n"
        "r['wait_short'] = port.wait(5)\n"
        "t0 = time.ticks_ms()\n"
        "r['wait_long'] = port.wait(500)\n"
        "r['waited_ms'] = time.ticks_diff(time.ticks_ms(), t0)\n"
        "r['n'] = port.readinto(buf)\n"
        "r['data'] = bytes(buf).decode()\n"
        "port.discard()\n"
        "r['after_discard'] = uart.any()\n"
        "t0 = time.ticks_ms()\n"
        "r['wait_none'] = port.wait(20)\n"
        "r['timeout_ms'] = time.ticks_diff(time.ticks_ms(), t0)\n"
        "print(json.dumps(r))\n"
    )).json()
    assert out["write"] == 3 and out["before"] == 0
    assert out["wait_short"] is False and out["wait_long"] is True
    assert out["waited_ms"] < 100
    assert out["n"] == 5 and out["data"] == "hello"
    assert out["after_discard"] == 0
    assert out["wait_none"] is False and 20 <= out["timeout_ms"] < 200


def test_rs485_master_transaction_de_low_while_reading(mpy):
    # A fake UART that answers like a slave; the master runs through Rs485.
    reply = with_crc(bytes.fromhex("0103040102030a"))
    out = mpy(RS485_FAKES + (
        "from v2g.modbus import RtuMaster\n"
        "class Slave(FakeUart):\n"
        "    def write(self, buf):\n"
        "        n = super().write(buf)\n"
        "        self.rx += bytes.fromhex(%r)\n"
        "        return n\n"
        "pin = FakePin()\n"
        "uart = Slave(pin)\n"
        "m = RtuMaster(Rs485(uart, pin, baud=19200), 1, baud=19200)\n"
        "data = bytes(m.read_holding(0, 2)).hex()\n"
        "print(json.dumps({'data': data, 'sent': uart.sent.hex(), 'log': [e[:2] for e in LOG]}))\n"
    ) % reply.hex()).json()
    assert out["data"] == "0102030a"
    assert out["sent"] == with_crc(bytes.fromhex("010300000002")).hex()
    reads = [e for e in out["log"] if e[0] == "read"]
    assert reads and all(level == 0 for _, level in reads)
    assert [e for e in out["log"] if e[0] != "read"] == [["de", 0], ["de", 1], ["write", 1], ["flush", 1], ["de", 0]]


# ------------------------------------------------------------ real peer: pymodbus


@pytest.fixture(scope="module")
def modbus_server():
    with ServerProcess(free_port()) as server:
        yield server


def test_pymodbus_round_trips(mpy, modbus_server):
    out = mpy((
        "import json, struct\n"
        "from v2g import modbus as M\n"
        "from v2g.hal.tcpstream import TcpStream\n"
        "m = M.RtuMaster(TcpStream('127.0.0.1', %d), %d, timeout_ms=1000)\n"
        "def regs(v):\n"
        "    return list(struct.unpack('>%%dH' %% (len(v) // 2), v))\n"
        "r = {}\n"
        "r['hr3'] = regs(m.read_holding(0, 3))\n"
        "r['ir3'] = regs(m.read_input(0, 3))\n"
        "r['hr125'] = regs(m.read_holding(0, 125))\n"
        "r['ir_end'] = regs(m.read_input(%d - 4, 4))\n"
        "m.write_single(150, 0xBEEF)\n"
        "m.write_single(151, -2)\n"
        "r['single'] = regs(m.read_holding(150, 2))\n"
        "m.write_multiple(160, [1, 2, 3, 0xFFFF])\n"
        "m.write_multiple(170, b'\\x12\\x34\\x56\\x78')\n"
        "r['multi'] = regs(m.read_holding(160, 4)) + regs(m.read_holding(170, 2))\n"
        "m.write_multiple(180, [7] * 20)\n"
        "r['multi20'] = regs(m.read_holding(180, 20))\n"
        "try:\n"
        "    m.read_holding(%d - 2, 3)\n"
        "    r['exc'] = None\n"
        "except M.ModbusExceptionResponse as e:\n"
        "    r['exc'] = [e.fc, e.code, e.name]\n"
        "try:\n"
        "    m.write_single(%d + 50, 1)\n"
        "    r['exc_w'] = None\n"
        "except M.ModbusExceptionResponse as e:\n"
        "    r['exc_w'] = [e.fc, e.code]\n"
        "r['after'] = regs(m.read_holding(0, 1))\n"
        "for k in ('transactions', 'errors', 'exceptions', 'retries_used'):\n"
        "    r[k] = getattr(m, k)\n"
        "print(json.dumps(r))\n"
    ) % (modbus_server.port, UNIT, REG_COUNT, REG_COUNT, REG_COUNT)).json()
    assert out["hr3"] == [holding_value(a) for a in range(3)]
    assert out["ir3"] == [input_value(a) for a in range(3)]
    assert out["hr125"] == [holding_value(a) for a in range(125)]
    assert out["ir_end"] == [input_value(a) for a in range(REG_COUNT - 4, REG_COUNT)]
    assert out["single"] == [0xBEEF, 0xFFFE]
    assert out["multi"] == [1, 2, 3, 0xFFFF, 0x1234, 0x5678]
    assert out["multi20"] == [7] * 20
    assert out["exc"] == [3, 2, "ILLEGAL_DATA_ADDRESS"]
    assert out["exc_w"] == [6, 2]
    assert out["after"] == [holding_value(0)]
    assert out["errors"] == 0 and out["retries_used"] == 0 and out["exceptions"] == 2


LOST_AND_BACK = r"""
import time
from v2g import modbus as M
from v2g.hal.tcpstream import TcpStream
stream = TcpStream('127.0.0.1', PORT, connect_timeout_ms=200)
m = M.RtuMaster(stream, UNIT, timeout_ms=200, retries=2)
print('up', m.read_holding(0, 1)[1])
state = 'up'
end_ms = time.ticks_add(time.ticks_ms(), 30000)
while time.ticks_diff(end_ms, time.ticks_ms()) > 0:
    try:
        v = m.read_holding(0, 2)
        if state == 'lost':
            print('recovered', v[1], v[3], stream.connects)
            break
    except M.LinkLost as e:
        if state == 'up':
            print('lost', type(e.cause).__name__)
            state = 'lost'
    time.sleep_ms(10)
else:
    print('gave up', state)
"""


def test_pymodbus_server_lost_then_back_on_same_port(mpy):
    port = free_port()
    server = ServerProcess(port).start()
    code = LOST_AND_BACK.replace("PORT", str(port)).replace("UNIT", str(UNIT))
    proc = subprocess.Popen([MICROPYTHON, "-c", code], stdout=subprocess.PIPE, text=True,
                            env=mp_env(), cwd=ROOT)
    try:
        assert proc.stdout.readline().split() == ["up", str(holding_value(0))]
        server.stop()  # SIGKILL while the master keeps polling
        line = proc.stdout.readline().split()
        assert line[0] == "lost", line
        assert line[1] in ("OSError", "ModbusTimeout", "ModbusFrameError")
        server = ServerProcess(port).start()
        line = proc.stdout.readline().split()
        assert line[:3] == ["recovered", str(holding_value(0)), str(holding_value(1))], line
        assert int(line[3]) >= 2  # it reconnected by itself
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        server.stop()


def test_tcpstream_refused_and_unconnected(mpy):
    port = free_port()  # nothing listens here
    out = mpy((
        "import json, time\n"
        "from v2g.hal.tcpstream import TcpStream\n"
        "from v2g import modbus as M\n"
        "s = TcpStream('127.0.0.1', %d, connect_timeout_ms=300)\n"
        "r = {}\n"
        "try:\n"
        "    s.readinto(bytearray(4))\n"
        "except OSError:\n"
        "    r['read_unconnected'] = 'OSError'\n"
        "r['wait_unconnected'] = s.wait(1000)\n"
        "s.discard()\n"
        "t0 = time.ticks_ms()\n"
        "try:\n"
        "    s.write(b'x')\n"
        "except OSError:\n"
        "    r['write'] = 'OSError'\n"
        "r['ms'] = time.ticks_diff(time.ticks_ms(), t0)\n"
        "m = M.RtuMaster(s, 1, timeout_ms=50)\n"
        "try:\n"
        "    m.read_holding(0, 1)\n"
        "except M.LinkLost as e:\n"
        "    r['lost'] = type(e.cause).__name__\n"
        "r['errors'] = m.errors\n"
        "print(json.dumps(r))\n"
    ) % port).json()
    assert out["read_unconnected"] == "OSError"
    assert out["wait_unconnected"] is True  # readable: the read reports the error at once
    assert out["write"] == "OSError" and out["ms"] < 1000
    assert out["lost"] == "OSError" and out["errors"] == 3
