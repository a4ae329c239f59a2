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

import pytest

from conftest import REFERENCE, run_mp, start_mp
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
# into JSON (host_tests/mp/modbus_script.py), so each test states its intent
# in plain Python below.


def run_cases(cases):
    return run_mp("modbus_cases", "run_cases", stdin=json.dumps(cases)).json()


def run_case(**case):
    case.setdefault("args", [])
    return run_cases([case])[0]


# ------------------------------------------------------------ CRC


def test_vectors_file_parsed():
    assert len(VECTORS) == 32
    for frame, desc in VECTORS:
        assert crc_ref(frame) == 0, desc  # the reference helper itself is right


def test_crc_of_every_published_frame():
    frames = [f.hex() for f, _ in VECTORS]
    res = run_mp("modbus_cases", "crc_frames", stdin=json.dumps(frames)).json()
    for (frame, desc), (body_crc, whole_crc, prefix_crc) in zip(VECTORS, res):
        wire = frame[-2] | frame[-1] << 8  # low byte first on the wire
        assert body_crc == wire, desc
        assert prefix_crc == wire, desc
        assert whole_crc == 0, desc


def test_crc_check_value_and_pymodbus_example():
    res = run_mp("modbus_cases", "crc_check_values").json()
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


def test_published_requests_are_produced_byte_exact():
    requests = [f for f, _ in VECTORS if kind(f) == "request"]
    assert len(requests) == 13  # 6x FC03, 1x FC04, 4x FC06, 2x FC16
    cases = [_request_case(f) for f in requests]
    # FC16 once more with the registers as a list of ints.
    fc16 = [f for f in requests if f[1] == 16]
    for f in fc16:
        regs = [f[7 + 2 * i] << 8 | f[8 + 2 * i] for i in range((len(f) - 9) // 2)]
        cases.append(dict(_request_case(f), args=[f[2] << 8 | f[3], regs]))
    for frame, res in zip(requests + fc16, run_cases(cases)):
        assert res["ok"], (frame.hex(), res)
        assert res["written"] == [frame.hex()]
        assert res["tx_bytes"] == len(frame)
        assert res["errors"] == 0 and res["retries_used"] == 0


def test_published_responses_decode():
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
    for case, want, res in zip(cases, expect, run_cases(cases)):
        assert res["ok"], (case, res)
        assert res["data"] == want
        assert len(res["written"]) == 1


def test_responses_that_do_not_answer_the_request_are_rejected():
    by_hex = {f.hex(): f for f, _ in VECTORS}
    unit0 = "000304008d008efabc"  # a response from unit 0: never ours
    fc01 = "0201010051cc"  # a read-coils answer to a holding read
    assert unit0 in by_hex and fc01 in by_hex
    cases = [
        dict(unit=0x11, call="read_holding", args=[0, 2], replies=[unit0] * 3),
        dict(unit=0x02, call="read_holding", args=[0, 1], replies=[fc01] * 3),
    ]
    for res in run_cases(cases):
        assert not res["ok"]
        assert res["err"] == "LinkLost" and res["cause"] == "ModbusFrameError", res
        assert len(res["written"]) == 3


def test_published_exception_frames():
    exc = {f.hex(): f for f, _ in VECTORS if kind(f) == "exception"}
    assert len(exc) == 5
    cases = [
        # (frame, request that it answers)
        ("118302c134", dict(unit=0x11, call="read_holding", args=[0x7C, 2])),
        ("ff8302a101", dict(unit=0xFF, call="read_holding", args=[0x7C, 2])),
        ("0186030261", dict(unit=0x01, call="write_single", args=[0x07D1, 0x010F])),
    ]
    results = run_cases([dict(c, replies=[h]) for h, c in cases])
    for (h, c), res, code in zip(cases, results, (2, 2, 3)):
        assert h in exc
        assert res["err"] == "ModbusExceptionResponse", res
        assert res["code"] == code and res["fc"] == exc[h][1] & 0x7F
        assert res["name"] == ("ILLEGAL_DATA_ADDRESS" if code == 2 else "ILLEGAL_DATA_VALUE")
        assert len(res["written"]) == 1  # a valid answer: not retried
        assert res["exceptions"] == 1 and res["errors"] == 0
    # An FC01 exception and one from unit 0 do not answer an FC03 request.
    assert "0a8102b053" in exc and "0083029131" in exc
    stray = run_cases([
        dict(unit=0x0A, call="read_holding", args=[0, 1], replies=["0a8102b053"] * 3),
        dict(unit=0x11, call="read_holding", args=[0, 1], replies=["0083029131"] * 3),
    ])
    for res in stray:
        assert res["err"] == "LinkLost" and res["cause"] == "ModbusFrameError", res


def test_exception_names():
    names = run_mp("modbus_cases", "exception_names").json()
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
def test_fault_is_typed_retried_then_link_lost(fault):
    bad, err = FAULTS[fault]
    lost, recovered = run_cases([
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


def test_no_retries_means_one_attempt():
    res = run_case(unit=0x11, call="read_holding", args=[0, 2], replies=[""], retries=0)
    assert res["err"] == "LinkLost" and res["cause"] == "ModbusTimeout"
    assert len(res["written"]) == 1


def test_write_echo_mismatch_is_a_frame_error():
    single_ok = "110600011234"
    bad_echo = with_crc(bytes.fromhex("110600011235")).hex()
    bad_qty = with_crc(bytes.fromhex("111000010003")).hex()
    res = run_cases([
        dict(unit=0x11, call="write_single", args=[1, 0x1234], replies=[bad_echo] * 3),
        dict(unit=0x11, call="write_multiple", args=[1, [1, 2]], replies=[bad_qty] * 3),
        dict(unit=0x11, call="write_single", args=[1, 0x1234], replies=[with_crc(bytes.fromhex(single_ok)).hex()]),
    ])
    for r in res[:2]:
        assert r["err"] == "LinkLost" and r["cause"] == "ModbusFrameError" and "echo" in r["text"], r
    assert res[2]["ok"]


def test_busy_and_acknowledge_are_retried_other_exceptions_not():
    busy = with_crc(bytes.fromhex("118306")).hex()
    ack = with_crc(bytes.fromhex("118305")).hex()
    failure = with_crc(bytes.fromhex("118304")).hex()
    res = run_cases([
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


def test_garbage_never_yields_accepted_data():
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
    results = run_cases([
        dict(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[c.hex()], retries=0, timeout_ms=3)
        for c in cases
    ])
    accepted = [(c.hex(), r) for c, r in zip(cases, results) if r["ok"]]
    assert accepted == []
    assert all(r["err"] == "LinkLost" for r in results)


def test_garbage_does_not_poison_the_next_transaction():
    noisy = bytes.fromhex("00ff11") + GOOD
    res = run_case(unit=0x11, call="read_holding", args=[0x7C, 2], replies=[noisy.hex(), GOOD.hex()])
    assert res["ok"] and res["data"] == "008d008e" and res["retries_used"] == 1
    assert res["rx_bytes"] >= len(noisy) + len(GOOD)


def test_response_arriving_byte_by_byte():
    frame = bytes.fromhex("1103 06 AE41 5652 4340 49AD".replace(" ", ""))
    res = run_case(unit=0x11, call="read_holding", args=[0x6B, 3], replies=[frame.hex()], chunk=1)
    assert res["ok"] and res["data"] == "ae4156524340"


def test_argument_errors_are_value_errors_and_send_nothing():
    calls = [
        ("read_holding", [0, 0]), ("read_holding", [0, 126]), ("read_input", [-1, 1]),
        ("read_input", [65535, 2]), ("write_single", [65536, 1]), ("write_single", [0, 65536]),
        ("write_single", [0, -32769]), ("write_multiple", [0, [0] * 124]), ("write_multiple", [0, []]),
        ("write_multiple", [0, {"hex": "010203"}]), ("write_multiple", [0, [70000]]),
    ]
    results = run_cases([dict(unit=1, call=c, args=a, replies=[]) for c, a in calls])
    for (call, args), res in zip(calls, results):
        assert res["err"] == "ValueError", (call, args, res)
        assert res["written"] == []
    res = run_mp("modbus_cases", "bad_units")
    assert res.lines() == ["rejected 0", "rejected 256", "rejected -1"]


def test_limits_are_accepted():
    full = with_crc([1, 3, 250] + [7] * 250).hex()
    res = run_cases([
        dict(unit=1, call="read_holding", args=[65536 - 125, 125], replies=[full]),
        dict(unit=1, call="write_multiple", args=[0, [0xFFFF, -1] * 61 + [-32768]],
             replies=[with_crc(bytes.fromhex("01100000007b")).hex()]),
    ])
    assert res[0]["ok"] and res[0]["data"] == "07" * 250
    assert res[1]["ok"]
    assert res[1]["written"][0][14:22] == "ffffffff" and res[1]["written"][0][-8:-4] == "8000"


def test_read_into_callers_buffer():
    reply = with_crc(bytes.fromhex("110304008d008e"))
    out = run_mp("modbus_cases", "read_into", reply.hex()).json()
    assert out == ["008d008e", "008d008eeeee", 4]


def test_inter_frame_gap_from_baud():
    out = run_mp("modbus_cases", "inter_frame_gaps").json()
    assert out == [4011, 2006, 1750, 1750, 0]  # 3.5 chars of 11 bits; fixed above 19200


def test_t35_silence_kept_before_each_request():
    reply = GOOD.hex()
    out = run_mp("modbus_cases", "t35_gaps", reply).json()
    assert len(out) == 2 and min(out) >= 4011


def test_steady_state_read_allocates_nothing():
    reply = with_crc([17, 3, 100] + list(range(100)))
    out = run_mp("modbus_cases", "steady_state_alloc", reply.hex())
    assert out.lines()[-1] == "none 1003 00010203"


# ------------------------------------------------------------ RS-485 stream

# The fake DE pin and UART: host_tests/mp/modbus_rs485_fakes.py.


def test_rs485_de_high_exactly_around_writes():
    out = run_mp("modbus_cases", "rs485_de_around_writes").json()
    log = out["log"]
    assert out["n"] == 8 and out["sent"] == "010300000001840a"
    assert [e[:2] for e in log] == [["de", 0], ["de", 1], ["write", 1], ["flush", 1], ["de", 0]]
    assert out["char_us"] == 1146  # 11 bits at 9600 baud, rounded up
    # After flush() the last character is still in the shift register: DE
    # stays up one more character time.
    assert log[4][2] - log[3][2] >= out["char_us"]


def test_rs485_without_flush_waits_the_frame_time():
    out = run_mp("modbus_cases", "rs485_without_flush").json()
    # de_active=0: the driver is enabled by a low level.
    assert [e[:2] for e in out] == [["de", 1], ["de", 0], ["write", 0], ["de", 1]]
    assert out[3][2] - out[1][2] >= 9 * 1146  # DE up for 8 bytes + one character


def test_rs485_write_failure_releases_the_bus():
    out = run_mp("modbus_cases", "rs485_write_failure").json()
    assert out == 0


def test_rs485_auto_direction_and_reads():
    out = run_mp("modbus_cases", "rs485_auto_direction").json()
    assert out["write"] == 3 and out["before"] == 0
    assert out["wait_short"] is False and out["wait_long"] is True
    assert out["waited_ms"] < 100
    assert out["n"] == 5 and out["data"] == "hello"
    assert out["after_discard"] == 0
    assert out["wait_none"] is False and 20 <= out["timeout_ms"] < 200


def test_rs485_master_transaction_de_low_while_reading():
    # A fake UART that answers like a slave; the master runs through Rs485.
    reply = with_crc(bytes.fromhex("0103040102030a"))
    out = run_mp("modbus_cases", "rs485_master_transaction", reply.hex()).json()
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


def test_pymodbus_round_trips(modbus_server):
    out = run_mp("modbus_cases", "pymodbus_round_trips", modbus_server.port, UNIT, REG_COUNT).json()
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


def test_pymodbus_server_lost_then_back_on_same_port():
    port = free_port()
    server = ServerProcess(port).start()
    proc = start_mp("modbus_lost_and_back", port, UNIT)
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


def test_tcpstream_refused_and_unconnected():
    port = free_port()  # nothing listens here
    out = run_mp("modbus_cases", "tcpstream_refused", port).json()
    assert out["read_unconnected"] == "OSError"
    assert out["wait_unconnected"] is True  # readable: the read reports the error at once
    assert out["write"] == "OSError" and out["ms"] < 1000
    assert out["lost"] == "OSError" and out["errors"] == 3
