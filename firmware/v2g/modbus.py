# Modbus RTU master for the inverter link (SunSpec sits on top of it).
#
# The stream is injected: hal.uart485.Rs485 on a board, hal.tcpstream.TcpStream
# (RTU frames over TCP) on the unix port. Both offer
#   write(buf) -> int, readinto(mv) -> int (non-blocking), wait(timeout_ms) -> bool,
#   discard()
#
# Design points (why, not what):
# - A value from a bad frame is never handed up: every response is checked for
#   unit, function code, length and CRC before its bytes are returned.
# - An exception response is a valid answer (SunSpec scanning relies on
#   ILLEGAL_DATA_ADDRESS), so it is raised at once; only BUSY/ACKNOWLEDGE are
#   worth asking again. CRC/frame errors, timeouts and OSError are retried a
#   bounded number of times, then LinkLost: the caller goes to fault mode.
# - Deadlines use the real ticks clock, never the (possibly warped) app clock:
#   a device's response time is physical.
# - Buffers are preallocated and reused; read results are memoryviews into them,
#   valid until the next call on the same master.
# - CRC is table-driven in viper: at 240 MHz an ESP32 spends about a millisecond
#   per 100-byte frame on a bytecode loop, tens of microseconds in viper.
import struct
import time
from array import array

import micropython
from micropython import const

# Function codes (Modbus Application Protocol V1.1b3)
_FC_READ_HOLDING = const(0x03)
_FC_READ_INPUT = const(0x04)
_FC_WRITE_SINGLE = const(0x06)
_FC_WRITE_MULTIPLE = const(0x10)
_EXC_BIT = const(0x80)

_MAX_READ_REGS = const(125)
_MAX_WRITE_REGS = const(123)
_ADU_MAX = const(256)
_HEADER_LEN = const(5)  # unit, fc, byte count or exception code, then 2 bytes
_BITS_PER_CHAR = const(11)
_T35_FAST_US = const(1750)  # fixed t3.5 above 19200 baud (serial line spec p.13)
_TCP_DRAIN_SILENCE_MS = const(2)  # "silence" on TCP: no segment for this long
_DRAIN_LIMIT_MS = const(50)  # drain gives up after this even if bytes keep coming

_EXC_ACKNOWLEDGE = const(5)
_EXC_BUSY = const(6)

# Index = exception code. 9 is not defined by the spec.
_EXC_NAMES = (
    "UNKNOWN",
    "ILLEGAL_FUNCTION",
    "ILLEGAL_DATA_ADDRESS",
    "ILLEGAL_DATA_VALUE",
    "SERVER_DEVICE_FAILURE",
    "ACKNOWLEDGE",
    "SERVER_DEVICE_BUSY",
    "NEGATIVE_ACKNOWLEDGE",
    "MEMORY_PARITY_ERROR",
    "UNKNOWN",
    "GATEWAY_PATH_UNAVAILABLE",
    "GATEWAY_TARGET_FAILED_TO_RESPOND",
)


# ---------------------------------------------------------------- errors


class ModbusError(Exception):
    pass


class ModbusTimeout(ModbusError):
    pass


class ModbusCRCError(ModbusError):
    pass


class ModbusFrameError(ModbusError):
    pass


class ModbusExceptionResponse(ModbusError):
    def __init__(self, fc, code):
        name = _EXC_NAMES[code] if 0 < code < len(_EXC_NAMES) else "UNKNOWN"
        super().__init__("fc %d exception %d %s" % (fc, code, name))
        self.fc = fc
        self.code = code
        self.name = name


class LinkLost(ModbusError):
    def __init__(self, cause):
        super().__init__("link lost: %s" % (cause,))
        self.cause = cause


# ---------------------------------------------------------------- CRC


def _crc_entry(byte):
    crc = byte
    for _ in range(8):
        crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def _crc_table():
    t = array("H", range(256))  # one allocation, no list of 256 ints first
    for i in range(256):
        t[i] = _crc_entry(i)
    return t


_CRC_TABLE = _crc_table()


@micropython.viper
def _crc_run(buf: ptr8, n: int, table: ptr16) -> int:
    # No bounds checks in viper: every caller passes n <= len(buf).
    crc = 0xFFFF
    i = 0
    while i < n:
        crc = (crc >> 8) ^ table[(crc ^ buf[i]) & 0xFF]
        i += 1
    return crc


def crc16(buf, n=None):
    """CRC-16/MODBUS of buf[:n] (all of buf by default): the true value,
    sent low byte first. check("123456789") == 0x4B37; a whole frame including
    its CRC gives 0."""
    size = len(buf)
    if n is None:
        n = size
    elif n < 0 or n > size:
        raise ValueError("n out of range")
    return _crc_run(buf, n, _CRC_TABLE)


# ---------------------------------------------------------------- master


def _check_range(addr, count, limit):
    if not 1 <= count <= limit:
        raise ValueError("count must be 1..%d" % limit)
    if addr < 0 or addr + count > 0x10000:
        raise ValueError("address out of range")


def _reg_value(value):
    # Accept int16 as well as uint16: SunSpec has signed registers.
    if not -0x8000 <= value <= 0xFFFF:
        raise ValueError("register value out of range")
    return value & 0xFFFF


class RtuMaster:
    """Talks to one unit over one stream. timeout_ms is the device's response
    latency per attempt (the frame's wire time at `baud` is added); `retries`
    more attempts follow a failed one; baud=None means TCP (no t3.5 gap).
    Not re-entrant: one transaction at a time (own it from one task)."""

    def __init__(self, stream, unit, timeout_ms=100, retries=2, baud=None):
        # 248..255 are reserved on a serial line but gateways use them;
        # 0 (broadcast) gets no answer, so a master cannot transact with it.
        if not 1 <= unit <= 255:
            raise ValueError("unit must be 1..255")
        self._stream = stream
        self.unit = unit
        self.timeout_ms = timeout_ms
        self.retries = retries
        self.baud = baud
        if baud:
            self.char_us = (_BITS_PER_CHAR * 1000000 + baud - 1) // baud
            self.t35_us = _T35_FAST_US if baud > 19200 else (7 * self.char_us + 1) // 2
            self._silence_ms = (self.t35_us + 999) // 1000
        else:
            # TCP: the transport frames the bytes; no inter-frame gap to keep.
            self.char_us = 0
            self.t35_us = 0
            self._silence_ms = _TCP_DRAIN_SILENCE_MS

        self._tx = bytearray(_ADU_MAX)
        self._rx = bytearray(_ADU_MAX)
        self._txmv = memoryview(self._tx)
        self._rxmv = memoryview(self._rx)
        self._tx8 = self._txmv[:8]  # every FC03/04/06 request is 8 bytes
        # One-entry caches of memoryview slices: polling the same block size
        # over and over then allocates nothing.
        self._want_len = 0
        self._want_mv = None
        self._data_len = 0
        self._data_mv = None
        self._last_rx_us = time.ticks_us()

        self.transactions = 0  # public calls made
        self.tx_bytes = 0
        self.rx_bytes = 0  # every byte read, garbage and drained bytes included
        self.errors = 0  # failed attempts (timeout, CRC, frame, OSError, busy)
        self.exceptions = 0  # exception responses received (a valid answer)
        self.retries_used = 0
        self.last_error = ""

    # -- public API -------------------------------------------------------

    def read_holding(self, addr, count, into=None):
        """FC03. Returns a memoryview of the 2*count big-endian register bytes:
        into the master's buffer (valid until the next call) or into `into`."""
        return self._read(_FC_READ_HOLDING, addr, count, into)

    def read_input(self, addr, count, into=None):
        """FC04, otherwise as read_holding."""
        return self._read(_FC_READ_INPUT, addr, count, into)

    def write_single(self, addr, value):
        """FC06; value is uint16 or int16. The echo must match exactly."""
        if not 0 <= addr <= 0xFFFF:
            raise ValueError("address out of range")
        struct.pack_into(">BBHH", self._tx, 0, self.unit, _FC_WRITE_SINGLE, addr, _reg_value(value))
        self._finish_request(6)
        self._transact(_FC_WRITE_SINGLE, 8, 8)

    def write_multiple(self, addr, regs):
        """FC16; regs is a list/tuple of uint16/int16 values, or bytes-like
        big-endian register data. The response must echo start and quantity."""
        tx = self._tx
        if isinstance(regs, (list, tuple)):
            count = len(regs)
            _check_range(addr, count, _MAX_WRITE_REGS)
            for i in range(count):
                struct.pack_into(">H", tx, 7 + 2 * i, _reg_value(regs[i]))
        else:
            nbytes = len(regs)
            if nbytes & 1:
                raise ValueError("register data must be whole registers")
            count = nbytes >> 1
            _check_range(addr, count, _MAX_WRITE_REGS)
            self._txmv[7 : 7 + nbytes] = regs
        struct.pack_into(">BBHHB", tx, 0, self.unit, _FC_WRITE_MULTIPLE, addr, count, 2 * count)
        req_len = 9 + 2 * count
        self._finish_request(req_len - 2)
        self._transact(_FC_WRITE_MULTIPLE, req_len, 8)

    # -- request side -----------------------------------------------------

    def _read(self, fc, addr, count, into):
        _check_range(addr, count, _MAX_READ_REGS)
        nbytes = 2 * count
        if into is not None and len(into) < nbytes:
            raise ValueError("into too small")
        struct.pack_into(">BBHH", self._tx, 0, self.unit, fc, addr, count)
        self._finish_request(6)
        self._transact(fc, 8, _HEADER_LEN + nbytes)
        if into is None:
            if self._data_len != nbytes:
                self._data_mv = self._rxmv[3 : 3 + nbytes]
                self._data_len = nbytes
            return self._data_mv
        into[:nbytes] = self._rxmv[3 : 3 + nbytes]
        return memoryview(into)[:nbytes]

    def _finish_request(self, n):
        crc = _crc_run(self._tx, n, _CRC_TABLE)
        self._tx[n] = crc & 0xFF  # low byte first on the wire
        self._tx[n + 1] = crc >> 8

    # -- transaction with bounded retries ----------------------------------

    def _transact(self, fc, req_len, resp_len):
        self.transactions += 1
        attempt = 0
        while True:
            try:
                self._attempt(fc, req_len, resp_len)
                return
            except ModbusExceptionResponse as e:
                self.last_error = str(e)
                if e.code != _EXC_BUSY and e.code != _EXC_ACKNOWLEDGE:
                    self.exceptions += 1
                    raise
                self.errors += 1
                cause = e
                if attempt < self.retries:
                    # A busy device needs time, not an immediate second request.
                    time.sleep_ms(self.timeout_ms)
            except ModbusError as e:
                cause = e
                self._failed(e)
            except OSError as e:
                cause = e
                self._failed(e)
            if attempt >= self.retries:
                raise LinkLost(cause)
            attempt += 1
            self.retries_used += 1

    def _failed(self, err):
        self.errors += 1
        if isinstance(err, OSError):
            self.last_error = "os error %s" % (err.args[0] if err.args else "?")
        else:
            self.last_error = str(err)
        # The rest of a broken frame may still be arriving: let the line go
        # quiet so it cannot be read as the start of the next response.
        self._drain()

    def _attempt(self, fc, req_len, resp_len):
        stream = self._stream
        stream.discard()  # a late answer to an earlier request is not ours
        if self.t35_us:
            gap_us = self.t35_us - time.ticks_diff(time.ticks_us(), self._last_rx_us)
            if gap_us > 0:
                time.sleep_us(gap_us)
        stream.write(self._tx8 if req_len == 8 else self._txmv[:req_len])
        self.tx_bytes += req_len
        # Response timeout is the device's latency; the frame's own wire time
        # (known in advance for every function code here) comes on top.
        deadline_ms = time.ticks_add(
            time.ticks_ms(), self.timeout_ms + (resp_len * self.char_us) // 1000 + 1
        )

        # Read up to the expected length at once (saves system calls on TCP),
        # but judge the header before trusting any length.
        got = self._fill(0, _HEADER_LEN, resp_len, deadline_ms)
        rx = self._rx
        if rx[0] != self.unit:
            raise ModbusFrameError("wrong unit %d" % rx[0])
        rfc = rx[1]
        if rfc != fc:
            if rfc == fc | _EXC_BIT:
                if _crc_run(rx, 5, _CRC_TABLE):
                    raise ModbusCRCError("bad CRC on exception response")
                raise ModbusExceptionResponse(fc, rx[2])
            raise ModbusFrameError("wrong function %d" % rfc)
        if fc <= _FC_READ_INPUT and rx[2] != resp_len - _HEADER_LEN:
            raise ModbusFrameError("wrong byte count %d" % rx[2])
        if got < resp_len:
            self._fill(got, resp_len, resp_len, deadline_ms)
        if _crc_run(rx, resp_len, _CRC_TABLE):
            raise ModbusCRCError("bad CRC")
        if fc >= _FC_WRITE_SINGLE:
            # FC06 echoes address and value; FC16 echoes start and quantity.
            tx = self._tx
            for i in range(2, 6):
                if rx[i] != tx[i]:
                    raise ModbusFrameError("echo mismatch")

    def _fill(self, pos, need, limit, deadline_ms):
        # Reads into rx[pos:] until at least `need` bytes are there, never past
        # `limit`; returns the byte count held.
        stream = self._stream
        while pos < need:
            left_ms = time.ticks_diff(deadline_ms, time.ticks_ms())
            if left_ms <= 0:
                if pos == 0:
                    raise ModbusTimeout("no response")
                raise ModbusFrameError("short frame: %d of %d bytes" % (pos, need))
            if not stream.wait(left_ms):
                continue
            if pos == 0 and limit == self._want_len:
                mv = self._want_mv
            elif pos == 0:
                mv = self._want_mv = self._rxmv[:limit]
                self._want_len = limit
            else:
                mv = self._rxmv[pos:limit]
            n = stream.readinto(mv)
            if n:
                pos += n
                self.rx_bytes += n
                self._last_rx_us = time.ticks_us()
        return pos

    def _drain(self):
        # Read and drop until the line has been silent for t3.5 (a couple of ms
        # on TCP), for at most _DRAIN_LIMIT_MS.
        stream = self._stream
        limit_ms = time.ticks_add(time.ticks_ms(), _DRAIN_LIMIT_MS)
        try:
            while time.ticks_diff(limit_ms, time.ticks_ms()) > 0:
                if not stream.wait(self._silence_ms):
                    return
                n = stream.readinto(self._rxmv)
                if not n:
                    return
                self.rx_bytes += n
                self._last_rx_us = time.ticks_us()
        except OSError:
            pass  # a dead link has nothing left to drain; the next write reports it
