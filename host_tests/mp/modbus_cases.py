# test_modbus.py's MicroPython half: v2g.modbus and its streams
# (host_tests/mp/cases.py). Case lists come as JSON on stdin.
import json
import struct
import sys
import time

import cases
import micropython
from modbus_script import Script, run_case
from v2g import modbus as M


def run_cases():
    # stdin: a JSON list of run_case() cases -> their outcomes
    return [run_case(c) for c in json.loads(sys.stdin.read())]


def crc_frames():
    # stdin: a JSON list of frames (hex) -> per frame [CRC of the body,
    # CRC of the whole frame, CRC of all but the last two bytes by length]
    F = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]
    return [[M.crc16(f[:-2]), M.crc16(f), M.crc16(f, len(f) - 2)] for f in F]


def crc_check_values():
    crc16 = M.crc16
    r = [crc16(b'123456789'), crc16(bytes.fromhex('1234234534564567')), crc16(b''),
         crc16(memoryview(b'xx123456789')[2:]), crc16(bytearray(b'123456789'))]
    for n in (-1, 10):
        try:
            crc16(b'123456789', n)
            r.append('no error')
        except ValueError:
            r.append('ValueError')
    return r


def exception_names():
    return [M.ModbusExceptionResponse(3, c).name for c in range(0, 13)]


def bad_units():
    # one line per unit id: accepted or rejected
    for u in (0, 256, -1):
        try:
            M.RtuMaster(None, u)
            print('accepted', u)
        except ValueError:
            print('rejected', u)


def read_into(reply):
    s = Script([bytes.fromhex(reply)])
    m = M.RtuMaster(s, 0x11)
    buf = bytearray(b'\xee' * 6)
    v = m.read_holding(0x7C, 2, into=buf)
    return [bytes(v).hex(), buf.hex(), len(v)]


def inter_frame_gaps():
    return [M.RtuMaster(None, 1, baud=b).t35_us for b in (9600, 19200, 38400, 115200, None)]


def t35_gaps(reply):
    # microseconds between the end of each answer and the next request
    class Timed(Script):
        def __init__(self, replies):
            super().__init__(replies)
            self.last_rx_us = None
            self.gaps_us = []

        def write(self, buf):
            if self.last_rx_us is not None:
                self.gaps_us.append(time.ticks_diff(time.ticks_us(), self.last_rx_us))
            return super().write(buf)

        def readinto(self, mv):
            n = super().readinto(mv)
            if n:
                self.last_rx_us = time.ticks_us()
            return n

    s = Timed([bytes.fromhex(reply)] * 3)
    m = M.RtuMaster(s, 0x11, baud=9600)
    for _ in range(3):
        m.read_holding(0x7C, 2)
    return s.gaps_us


class Replay:
    # Hands out the same reply after every write, without allocating.
    def __init__(self, reply):
        self.reply = reply
        self.pos = len(reply)

    def write(self, buf):
        self.pos = 0
        return len(buf)

    def readinto(self, mv):
        n = min(len(self.reply) - self.pos, len(mv))
        for i in range(n):
            mv[i] = self.reply[self.pos + i]
        self.pos += n
        return n

    def wait(self, timeout_ms):
        return self.pos < len(self.reply)

    def discard(self):
        self.pos = len(self.reply)


def steady_state_alloc(reply):
    # prints: "none" when 1,000 reads under heap_lock allocated nothing,
    # the transactions, the first registers
    m = M.RtuMaster(Replay(bytes.fromhex(reply)), 17)

    def poll(n):
        for _ in range(n):
            m.read_holding(0, 50)

    poll(3)
    result = 'allocated'
    micropython.heap_lock()
    try:
        poll(1000)
        result = 'none'
    except MemoryError:
        pass
    micropython.heap_unlock()
    print(result, m.transactions, bytes(m.read_holding(0, 50)[:4]).hex())


# ------------------------------------------------------------ RS-485 stream


def rs485_de_around_writes():
    from modbus_rs485_fakes import LOG, FakePin, FakeUart
    from v2g.hal.uart485 import Rs485

    pin = FakePin()
    uart = FakeUart(pin)
    port = Rs485(uart, pin, baud=9600)
    n = port.write(b'\x01\x03\x00\x00\x00\x01\x84\x0a')
    return {'n': n, 'sent': uart.sent.hex(), 'log': LOG, 'char_us': port.char_us}


def rs485_without_flush():
    from modbus_rs485_fakes import LOG, FakePin, FakeUart
    from v2g.hal.uart485 import Rs485

    pin = FakePin()
    port = Rs485(FakeUart(pin, with_flush=False), pin, de_active=0, baud=9600)
    port.write(bytes(8))
    return LOG


def rs485_write_failure():
    # the DE level after a write that failed
    from modbus_rs485_fakes import FakePin, FakeUart
    from v2g.hal.uart485 import Rs485

    pin = FakePin()
    port = Rs485(FakeUart(pin, short_write=True), pin)
    try:
        port.write(b'abc')
        return 'no error'
    except OSError:
        return pin.v


def rs485_auto_direction():
    from modbus_rs485_fakes import FakeUart
    from v2g.hal.uart485 import Rs485

    uart = FakeUart(None, rx=b'hello world', arrive_ms=30)
    port = Rs485(uart, baud=115200)
    r = {'write': port.write(b'xyz')}
    buf = bytearray(5)
    r['before'] = port.readinto(buf)
    r['wait_short'] = port.wait(5)
    t0 = time.ticks_ms()
    r['wait_long'] = port.wait(500)
    r['waited_ms'] = time.ticks_diff(time.ticks_ms(), t0)
    r['n'] = port.readinto(buf)
    r['data'] = bytes(buf).decode()
    port.discard()
    r['after_discard'] = uart.any()
    t0 = time.ticks_ms()
    r['wait_none'] = port.wait(20)
    r['timeout_ms'] = time.ticks_diff(time.ticks_ms(), t0)
    return r


def rs485_master_transaction(reply):
    # a fake UART that answers like a slave; the master runs through Rs485
    from modbus_rs485_fakes import LOG, FakePin, FakeUart
    from v2g.hal.uart485 import Rs485

    class Slave(FakeUart):
        def write(self, buf):
            n = super().write(buf)
            self.rx += bytes.fromhex(reply)
            return n

    pin = FakePin()
    uart = Slave(pin)
    m = M.RtuMaster(Rs485(uart, pin, baud=19200), 1, baud=19200)
    data = bytes(m.read_holding(0, 2)).hex()
    return {'data': data, 'sent': uart.sent.hex(), 'log': [e[:2] for e in LOG]}


# ------------------------------------------------------------ real peers


def pymodbus_round_trips(port, unit, reg_count):
    from v2g.hal.tcpstream import TcpStream

    reg_count = int(reg_count)
    m = M.RtuMaster(TcpStream('127.0.0.1', int(port)), int(unit), timeout_ms=1000)

    def regs(v):
        return list(struct.unpack('>%dH' % (len(v) // 2), v))

    r = {}
    r['hr3'] = regs(m.read_holding(0, 3))
    r['ir3'] = regs(m.read_input(0, 3))
    r['hr125'] = regs(m.read_holding(0, 125))
    r['ir_end'] = regs(m.read_input(reg_count - 4, 4))
    m.write_single(150, 0xBEEF)
    m.write_single(151, -2)
    r['single'] = regs(m.read_holding(150, 2))
    m.write_multiple(160, [1, 2, 3, 0xFFFF])
    m.write_multiple(170, b'\x12\x34\x56\x78')
    r['multi'] = regs(m.read_holding(160, 4)) + regs(m.read_holding(170, 2))
    m.write_multiple(180, [7] * 20)
    r['multi20'] = regs(m.read_holding(180, 20))
    try:
        m.read_holding(reg_count - 2, 3)
        r['exc'] = None
    except M.ModbusExceptionResponse as e:
        r['exc'] = [e.fc, e.code, e.name]
    try:
        m.write_single(reg_count + 50, 1)
        r['exc_w'] = None
    except M.ModbusExceptionResponse as e:
        r['exc_w'] = [e.fc, e.code]
    r['after'] = regs(m.read_holding(0, 1))
    for k in ('transactions', 'errors', 'exceptions', 'retries_used'):
        r[k] = getattr(m, k)
    return r


def tcpstream_refused(port):
    # a TcpStream to PORT, where nothing listens
    from v2g.hal.tcpstream import TcpStream

    s = TcpStream('127.0.0.1', int(port), connect_timeout_ms=300)
    r = {}
    try:
        s.readinto(bytearray(4))
    except OSError:
        r['read_unconnected'] = 'OSError'
    r['wait_unconnected'] = s.wait(1000)
    s.discard()
    t0 = time.ticks_ms()
    try:
        s.write(b'x')
    except OSError:
        r['write'] = 'OSError'
    r['ms'] = time.ticks_diff(time.ticks_ms(), t0)
    m = M.RtuMaster(s, 1, timeout_ms=50)
    try:
        m.read_holding(0, 1)
    except M.LinkLost as e:
        r['lost'] = type(e.cause).__name__
    r['errors'] = m.errors
    return r


cases.main(globals())
