# SLCAN (Lawicel ASCII) host: the firmware drives a serial-line CAN adapter
# (a USB "CANable"/"USBtin"-style stick, a pty to a simulator, or a TCP
# gateway) and presents it as the CanBus interface (v2g.can). For the unix
# port, where there is no CAN controller.
#
# Wire format, one line per item, each ended by CR:
#   host -> adapter   "C" close, "S6" 500 kbit/s, "O" open (or "L" listen
#                     only), "tIIILDD.." / "TIIIIIIIILDD.." / "rIIIL" /
#                     "RIIIIIIIIL" transmit, "F" read status flags
#   adapter -> host   the bus's frames as the same t/T/r/R lines (optionally
#                     followed by a 4-digit timestamp), "" (bare CR) = OK,
#                     "z"/"Z" = transmitted, BEL (0x07, no CR) = error,
#                     "Fxx" = status flags, "Vxxxx"/"Nxxxx" = version/serial
# A peer that is itself an SLCAN host (python-can's slcan on the other end of
# a pty, as the simulator does) sends its own "C", "S6", "O" lines: they are
# not frames and are skipped like replies.
#
# Design points:
# - Nothing blocks: reads use a tty in raw mode with VMIN=0/VTIME=0 (a read
#   returns what is there, or nothing) behind a zero-timeout poll, or a
#   non-blocking socket; a write is only attempted when poll says there is
#   room, and a line that went out in part is finished before the next one.
# - Replies are not awaited: the setup commands go out at start and the
#   adapter's answers are skipped when they arrive. BELs are counted (nacks),
#   not fatal: many adapters answer "C" with BEL when already closed.
# - Garbage (bad hex, wrong lengths, DLC > 8, IDs out of range, overlong
#   lines, unknown commands) is counted in `errors` and skipped; the parser
#   resynchronises at the next CR or BEL.
# - Parsing is viper over preallocated buffers: no allocation per frame.
#   (ptr8/ptr32 are viper types, not Python names: hence the type-ignore
#   comments for the HAL's mypy check.)
# - A lost link (EOF, hang-up, socket reset) is state "bus_off"; recover()
#   reopens it and sends the setup again.
import errno
from array import array

import micropython
from micropython import const

from v2g.can import STATE_ACTIVE, STATE_BUS_OFF, STATE_PASSIVE, STATE_WARNING, CanBus, check_frame

_CR = const(13)
_BEL = const(7)
_LINE_MAX = const(40)  # longest valid line is 31 ("T" + 8 + 1 + 16 + 4 timestamp + CR)
_RX_SIZE = const(512)
_SPINS = const(64)  # lines or reads handled per recv_into() at most

# Lawicel bit rate commands
_BITRATES = {
    10000: b"S0\r",
    20000: b"S1\r",
    50000: b"S2\r",
    100000: b"S3\r",
    125000: b"S4\r",
    250000: b"S5\r",
    500000: b"S6\r",
    800000: b"S7\r",
    1000000: b"S8\r",
}

# "F" status flags (Lawicel): what they mean for the interface
_F_WARNING = const(0x04)
_F_OVERRUN = const(0x08)
_F_PASSIVE = const(0x20)
_F_BUS_ERROR = const(0x80)

# _parse() results
_P_FRAME = const(1)
_P_SKIP = const(0)
_P_STATUS = const(2)
_P_BAD = const(-1)

_HEX = b"0123456789ABCDEF"

# termios c_cc indices on Linux (the unix port's termios has no names for them)
_VTIME = const(5)
_VMIN = const(6)


@micropython.viper
def _take_line(src: ptr8, pos: int, end: int, line: ptr8, st: ptr32) -> int:  # type: ignore[name-defined]
    # Append src[pos:end] to line up to the first CR or BEL. st[0] = line
    # length so far, st[1] = 1 once bytes were dropped (line too long),
    # st[2] = the terminator. Returns the index after it, or -1 if none yet.
    n = st[0]
    while pos < end:
        c = src[pos]
        pos += 1
        if c == _CR or c == _BEL:
            st[0] = n
            st[2] = c
            return pos
        if n < _LINE_MAX:
            line[n] = c
            n += 1
        else:
            st[1] = 1
    st[0] = n
    return -1


# Hex digit values for viper: 0..15, or 0xFF for "not a hex digit".
_HEXVAL = bytearray(b"\xff" * 256)
for _i in range(10):
    _HEXVAL[0x30 + _i] = _i
for _i in range(6):
    _HEXVAL[0x41 + _i] = 10 + _i
    _HEXVAL[0x61 + _i] = 10 + _i


@micropython.viper
def _parse(line: ptr8, n: int, data: ptr8, out: ptr32, hexval: ptr8) -> int:  # type: ignore[name-defined]
    # One line without its terminator. For a frame: out = [id, dlc, ext, rtr]
    # and data[:dlc] filled (only once the whole line has proved valid).
    if n == 0:
        return _P_SKIP  # bare CR: the adapter's OK
    c = line[0]
    ext = 0
    rtr = 0
    if c == 0x74:  # t
        idlen = 3
    elif c == 0x54:  # T
        idlen = 8
        ext = 1
    elif c == 0x72:  # r
        idlen = 3
        rtr = 1
    elif c == 0x52:  # R
        idlen = 8
        ext = 1
        rtr = 1
    elif c == 0x46:  # F: status flags
        if n != 3:
            return _P_BAD
        hi = hexval[line[1]]
        lo = hexval[line[2]]
        if hi > 15 or lo > 15:
            return _P_BAD
        out[0] = (hi << 4) | lo
        return _P_STATUS
    elif c == 0x7A or c == 0x5A or c == 0x56 or c == 0x76 or c == 0x4E:
        return _P_SKIP  # z Z V v N: TX acks, version, serial number
    elif (c == 0x43 or c == 0x4F or c == 0x4C or c == 0x53 or c == 0x73 or c == 0x4D
          or c == 0x6D or c == 0x58 or c == 0x57 or c == 0x55 or c == 0x51 or c == 0x59):
        return _P_SKIP  # C O L S s M m X W U Q Y: a peer host's commands
    else:
        return _P_BAD
    if n < idlen + 2:
        return _P_BAD
    # every character after the type letter is a hex digit (the DLC too)
    i = 1
    while i < n:
        if hexval[line[i]] > 15:
            return _P_BAD
        i += 1
    can_id = 0
    i = 1
    while i <= idlen:
        can_id = (can_id << 4) | hexval[line[i]]
        i += 1
    if ext:
        if can_id > 0x1FFFFFFF:
            return _P_BAD
    elif can_id > 0x7FF:
        return _P_BAD
    dlc = hexval[line[idlen + 1]]
    if dlc > 8:
        return _P_BAD
    p = idlen + 2
    need = p
    if not rtr:
        need = p + 2 * dlc
    if n != need and n != need + 4:  # + optional timestamp
        return _P_BAD
    if not rtr:
        k = 0
        while k < dlc:
            data[k] = (hexval[line[p]] << 4) | hexval[line[p + 1]]
            p += 2
            k += 1
    out[0] = can_id
    out[1] = dlc
    out[2] = ext
    out[3] = rtr
    return _P_FRAME


class SlcanBus(CanBus):
    """stream: write(mv) -> int (0 = no room now), readinto(mv) -> int
    (0 = nothing now; OSError = link lost), reopen(), close(). Injected:
    open_pty() below builds one for a tty; for TCP, hal.can_build's
    open_slcan_tcp() (a hal.tcpstream.TcpStream: this module imports no hal)."""

    def __init__(self, stream, bitrate=500000, listen_only=False):
        super().__init__()
        if bitrate not in _BITRATES:
            raise ValueError("SLCAN bit rates: " + ", ".join(str(b) for b in sorted(_BITRATES)))
        self._stream = stream
        self._setup_cmd = b"C\r" + _BITRATES[bitrate] + (b"L\r" if listen_only else b"O\r")
        self._rx = bytearray(_RX_SIZE)
        self._rxmv = memoryview(self._rx)
        self._pos = 0
        self._end = 0
        self._line = bytearray(_LINE_MAX)
        self._st = array("i", (0, 0, 0))  # line length, overlong, terminator
        self._meta = array("i", (0, 0, 0, 0))  # id, dlc, ext, rtr
        self._tx = bytearray(32)
        self._txv = tuple(memoryview(self._tx)[:n] for n in range(32))
        self._tx_pos = 0
        self._tx_end = 0
        self._flags = 0  # last "F" status
        self.nacks = 0  # BEL replies
        self._up = False
        self._start()

    # ------------------------------------------------------------ link

    def _start(self):
        self._pos = self._end = 0
        self._tx_pos = self._tx_end = 0
        self._st[0] = self._st[1] = 0
        self._flags = 0
        try:
            self._write_all(self._setup_cmd)
            self._up = True
        except OSError:
            self._down()

    def _write_all(self, data):
        # Set-up only: a few bytes into an empty buffer.
        mv = memoryview(data)
        sent = 0
        for _ in range(8):
            sent += self._stream.write(mv[sent:])
            if sent >= len(data):
                return
        raise OSError(errno.EAGAIN)

    def _down(self):
        if self._up:
            self.bus_off_count += 1
        elif not self.bus_off_count:
            self.bus_off_count = 1  # never came up: still one loss to report
        self._up = False

    def recover(self):
        """Reopen the serial line or socket and send the set-up again."""
        try:
            self._stream.reopen()
        except OSError:
            self._down()
            return
        self._start()

    def close(self):
        try:
            if self._up:
                self._stream.write(memoryview(b"C\r"))
        except OSError:
            pass
        self._up = False
        self._stream.close()

    def state(self):
        if not self._up:
            return STATE_BUS_OFF
        f = self._flags
        if f & _F_PASSIVE:
            return STATE_PASSIVE
        if f & _F_WARNING:
            return STATE_WARNING
        return STATE_ACTIVE

    def request_status(self):
        """Ask the adapter for its "F" flags; state() reflects the answer
        once recv_into() has read it."""
        return self._queue_line(b"F\r")

    # ------------------------------------------------------------ TX

    def _flush_tx(self):
        pos = self._tx_pos
        end = self._tx_end
        if pos >= end:
            return True
        # A whole line uses a preallocated view; the remainder of a line that
        # went out in part (full buffer: rare) costs one slice.
        mv = self._txv[end] if pos == 0 else memoryview(self._tx)[pos:end]
        try:
            k = self._stream.write(mv)
        except OSError:
            self._down()
            return False
        self._tx_pos = pos + (k or 0)
        return self._tx_pos >= end

    def _queue_line(self, line):
        if not self._up or not self._flush_tx():
            return False
        t = self._tx
        n = len(line)
        for i in range(n):
            t[i] = line[i]
        self._tx_pos = 0
        self._tx_end = n
        self._flush_tx()
        return self._up

    def send(self, can_id, data, ext=False):
        n = check_frame(can_id, data, ext)
        if not self._up or not self._flush_tx():
            return False  # link down, or the previous line still waits
        t = self._tx
        h = _HEX
        if ext:
            t[0] = 0x54  # T
            shift = 28
            p = 1
            while shift >= 0:
                t[p] = h[(can_id >> shift) & 15]
                p += 1
                shift -= 4
        else:
            t[0] = 0x74  # t
            t[1] = h[(can_id >> 8) & 15]
            t[2] = h[(can_id >> 4) & 15]
            t[3] = h[can_id & 15]
            p = 4
        t[p] = 0x30 + n
        p += 1
        for i in range(n):
            b = data[i]
            t[p] = h[b >> 4]
            t[p + 1] = h[b & 15]
            p += 2
        t[p] = _CR
        self._tx_pos = 0
        self._tx_end = p + 1
        self._flush_tx()  # whatever did not fit goes out on the next call
        if not self._up:
            return False
        self.tx_frames += 1
        return True

    # ------------------------------------------------------------ RX

    def _fill(self):
        try:
            n = self._stream.readinto(self._rxmv)
        except OSError:
            self._down()
            return False
        if not n:
            return False
        self._pos = 0
        self._end = n
        return True

    def _line_done(self, frame):
        st = self._st
        n = st[0]
        overlong = st[1]
        st[0] = 0
        st[1] = 0
        if st[2] == _BEL:
            self.nacks += 1
            if n:
                self.errors += 1  # a BEL inside a line: noise
            return False
        if overlong:
            self.errors += 1
            return False
        meta = self._meta
        r = _parse(self._line, n, frame.data, meta, _HEXVAL)
        if r == _P_FRAME:
            frame.id = meta[0]
            frame.dlc = meta[1]
            frame.ext = bool(meta[2])
            frame.rtr = bool(meta[3])
            if self._accepts(frame):
                self.rx_frames += 1
                return True
            return False
        if r == _P_STATUS:
            f = meta[0]
            self._flags = f
            if f & _F_OVERRUN:
                self.rx_overflows += 1
            if f & _F_BUS_ERROR:
                self.errors += 1
            return False
        if r == _P_BAD:
            self.errors += 1
        return False

    def recv_into(self, frame):
        if not self._up:
            return False
        if self._tx_pos < self._tx_end:
            self._flush_tx()  # keep a half-sent line moving
        st = self._st
        for _ in range(_SPINS):
            if self._pos >= self._end and not self._fill():
                return False
            nxt = _take_line(self._rx, self._pos, self._end, self._line, st)
            if nxt < 0:
                self._pos = self._end
                continue
            self._pos = nxt
            if self._line_done(frame):
                return True
        return False


# ---------------------------------------------------------------- streams


class PtyStream:
    """A tty (pty, USB CDC or UART SLCAN adapter) in raw mode, non-blocking.
    unix port only (termios). If the device is missing the stream starts
    closed and every call raises OSError until reopen() succeeds."""

    def __init__(self, path, baud=None):
        self.path = path
        self.baud = baud
        self._f = None
        self._poll = None
        try:
            self.reopen()
        except OSError:
            pass

    def reopen(self):
        import select
        import termios

        self.close()
        f = open(self.path, "r+b")
        try:
            fd = f.fileno()
            # MicroPython's termios has setraw (CPython keeps it in tty)
            termios.setraw(fd)  # type: ignore[attr-defined]
            attr = termios.tcgetattr(fd)
            # VMIN=0, VTIME=0: read() returns what is there at once. A file
            # readinto() loops until its buffer is full or a read returns 0,
            # so without this it would block on a partly filled line.
            attr[6][_VMIN] = 0
            attr[6][_VTIME] = 0
            if self.baud:
                speed = getattr(termios, "B%d" % self.baud)
                attr[4] = speed
                attr[5] = speed
            termios.tcsetattr(fd, termios.TCSANOW, attr)
            p = select.poll()
            p.register(f, select.POLLIN | select.POLLOUT)
        except BaseException:
            f.close()
            raise
        self._f = f
        self._poll = p
        self._pollin = select.POLLIN
        self._pollout = select.POLLOUT
        self._pollbad = select.POLLHUP | select.POLLERR
        self._events()  # first ipoll allocates its result tuple; do it now

    def _events(self):
        if self._f is None:
            raise OSError(errno.ENOTCONN)
        for _obj, ev in self._poll.ipoll(0):
            if ev & self._pollbad:
                raise OSError(errno.EIO)  # the other end hung up
            return ev
        return 0

    def readinto(self, mv):
        if not self._events() & self._pollin:
            return 0
        return self._f.readinto(mv) or 0

    def write(self, mv):
        # POLLOUT on a tty means under 256 bytes are queued: a line fits.
        if not self._events() & self._pollout:
            return 0
        return self._f.write(mv) or 0

    def close(self):
        f = self._f
        self._f = None
        self._poll = None
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


def open_pty(path, baud=None):
    """"slcan:PATH": a serial device or pty."""
    return PtyStream(path, baud)
