"""MCP2515 driver (firmware/v2g/can/mcp2515.py) against a register-level model
of the chip, on the unix port.

The model (MODEL below, MicroPython) is what the board would hand the driver:
an SPI object and a CS pin object (plus the INT pin). It decodes the SPI
instruction set byte by byte between CS edges (RESET, READ, WRITE, BIT
MODIFY, READ STATUS, RX STATUS, READ RX BUFFER, LOAD TX BUFFER, RTS), keeps
the register file with the data sheet's access rules (configuration-only
registers, read-only bits, CANSTAT following CANCTRL a read later), and plays
the bus side: acceptance masks and filters, RX buffers with rollover and
overflow flags, transmission of requested buffers by priority, TEC/REC with
the error-state flags and bus off. It never allocates on the SPI path, so the
driver can be run under micropython.heap_lock().
"""
import json

import pytest

MODEL = r"""
import micropython

_CONFIG_ONLY = bytearray(128)
for _a in list(range(0x00, 0x0C)) + list(range(0x10, 0x1C)) + list(range(0x20, 0x2B)):
    _CONFIG_ONLY[_a] = 1  # RXFn, RXMn, CNF1..3: writable in configuration mode only
_BITMOD_OK = bytearray(128)
for _a in (0x0C, 0x0D, 0x28, 0x29, 0x2A, 0x2B, 0x2C, 0x2D, 0x30, 0x40, 0x50, 0x60, 0x70):
    _BITMOD_OK[_a] = 1
for _a in range(0x0F, 0x80, 0x10):
    _BITMOD_OK[_a] = 1  # CANCTRL and its mirrors

# transaction phases
_P_IDLE, _P_INSTR, _P_ADDR_R, _P_READ, _P_ADDR_W, _P_WRITE, _P_BM_ADDR, _P_BM_MASK, _P_BM_DATA, _P_STATUS, _P_RXSTATUS, _P_DEAD = range(12)


class Model:
    def __init__(self, absent=False):
        self.regs = bytearray(128)
        self.absent = absent  # no chip: MISO floats high
        self.tec = 0
        self.rec = 0
        self.cs_low = False
        self.phase = _P_IDLE
        self.ptr = 0
        self.instr = 0
        self.bm_addr = 0
        self.bm_mask = 0
        self.clear_rx = -1  # RXnIF to clear when CS rises (READ RX BUFFER)
        self.pending_reset = False
        self.mode_lag = 1  # CANSTAT reads before OPMOD follows REQOP
        self.lag_left = 0
        self.transactions = 0
        self.instr_hist = bytearray(256)  # per instruction byte, saturating
        self.violations = 0  # CS protocol errors (nested select, data without CS)
        self.config_violations = 0  # config-only registers written outside config mode
        self.sent = []  # transmitted frames: (id, ext, rtr, bytes) (allocates: bus side only)
        self.sent_count = 0
        self.last_tx_id = -1
        self.hook = None  # called on spi.write(): a "scheduled callback" mid-transaction
        self.spi = _Spi(self)
        self.cs = _Pin(self, 0)
        self.int_pin = _Pin(self, 1)
        self._reset()

    # -- chip state
    def _reset(self):
        r = self.regs
        for i in range(128):
            r[i] = 0
        r[0x0F] = 0x87  # REQOP config, CLKEN, CLKPRE 1:8
        r[0x0E] = 0x80  # OPMOD config
        self.tec = 0
        self.rec = 0
        self.lag_left = 0

    def mode(self):
        return self.regs[0x0E] & 0xE0

    def _update_eflg(self):
        r = self.regs
        tec = self.tec
        rec = self.rec
        old = r[0x2D]
        new = old & 0xC0
        if tec >= 96 or rec >= 96:
            new |= 0x01
        if rec >= 96:
            new |= 0x02
        if tec >= 96:
            new |= 0x04
        if rec >= 128:
            new |= 0x08
        if tec >= 128:
            new |= 0x10
        if tec > 255:
            new |= 0x20
        r[0x2D] = new
        r[0x1C] = tec if tec < 256 else 255
        r[0x1D] = rec if rec < 256 else 255
        if new & ~old:
            r[0x2C] |= 0x20  # ERRIF

    def _read_reg(self, a):
        a &= 0x7F
        if a & 0x0F == 0x0E:
            # OPMOD follows REQOP only after mode_lag reads (a mode change
            # completes after the current frame), so drivers must poll
            if self.lag_left > 0:
                self.lag_left -= 1
                if self.lag_left == 0:
                    self.regs[0x0E] = (self.regs[0x0E] & 0x1F) | (self.regs[0x0F] & 0xE0)
            return self.regs[0x0E]
        if a & 0x0F == 0x0F:
            return self.regs[0x0F]
        return self.regs[a]

    def _write_reg(self, a, v):
        a &= 0x7F
        r = self.regs
        lo = a & 0x0F
        if lo == 0x0E or a == 0x1C or a == 0x1D:
            return  # CANSTAT, TEC, REC: read-only
        if lo == 0x0F:
            old = r[0x0F]
            r[0x0F] = v
            if (v ^ old) & 0xE0 or (r[0x0E] & 0xE0) != (v & 0xE0):
                self.lag_left = self.mode_lag
                if self.lag_left == 0:
                    r[0x0E] = (r[0x0E] & 0x1F) | (v & 0xE0)
            return
        if _CONFIG_ONLY[a] and self.mode() != 0x80:
            self.config_violations += 1
            return
        if a == 0x2D:
            r[a] = (r[a] & 0x3F) | (v & r[a] & 0xC0)  # only RXnOVR, and only cleared
            return
        if a in (0x30, 0x40, 0x50):
            r[a] = (r[a] & 0x70) | (v & 0x0B)  # TXREQ, TXP; ABTF MLOA TXERR read-only
            return
        if a == 0x60:
            r[a] = (r[a] & 0x0B) | (v & 0x64)  # RXM, BUKT; BUKT1, FILHIT0 read-only
            return
        if a == 0x70:
            r[a] = (r[a] & 0x0F) | (v & 0x60)
            return
        r[a] = v

    def _status(self):
        r = self.regs
        f = r[0x2C]
        s = f & 0x03
        if r[0x30] & 0x08:
            s |= 0x04
        if f & 0x04:
            s |= 0x08
        if r[0x40] & 0x08:
            s |= 0x10
        if f & 0x08:
            s |= 0x20
        if r[0x50] & 0x08:
            s |= 0x40
        if f & 0x10:
            s |= 0x80
        return s

    def _rx_status(self):
        r = self.regs
        f = r[0x2C] & 3
        s = f << 6
        base = 0x61 if f & 1 else 0x71
        if f:
            sidl = r[base + 1]
            ext = 1 if sidl & 0x08 else 0
            rtr = (r[base + 4] & 0x40) if ext else (sidl & 0x10)
            s |= (ext << 4) | ((1 if rtr else 0) << 3)
            s |= r[0x60 if f & 1 else 0x70] & 0x07
        return s

    # -- SPI byte engine
    def cs_edge(self, v):
        if v == 0:
            if self.cs_low:
                self.violations += 1  # selected twice: an interleaved transaction
            self.cs_low = True
            self.phase = _P_INSTR
            self.transactions += 1
            return
        if not self.cs_low:
            return
        self.cs_low = False
        if self.clear_rx >= 0:
            self.regs[0x2C] &= ~(1 << self.clear_rx)
            self.clear_rx = -1
        if self.pending_reset:
            self.pending_reset = False
            self._reset()
        self.phase = _P_IDLE

    def xfer(self, b):
        if not self.cs_low:
            self.violations += 1
            return 0xFF
        if self.absent:
            return 0xFF
        p = self.phase
        if p == _P_INSTR:
            self.instr = b
            h = self.instr_hist
            if h[b] < 255:
                h[b] += 1
            if b == 0xC0:
                self.pending_reset = True
                self.phase = _P_DEAD
            elif b == 0x03:
                self.phase = _P_ADDR_R
            elif b == 0x02:
                self.phase = _P_ADDR_W
            elif b == 0x05:
                self.phase = _P_BM_ADDR
            elif b == 0xA0:
                self.phase = _P_STATUS
            elif b == 0xB0:
                self.phase = _P_RXSTATUS
            elif b & 0xF9 == 0x90:  # READ RX BUFFER 0x90 0x92 0x94 0x96
                n = (b >> 2) & 1
                self.ptr = (0x61 if n == 0 else 0x71) + (5 if b & 2 else 0)
                self.clear_rx = n
                self.phase = _P_READ
            elif b & 0xF8 == 0x40 and b & 7 <= 5:  # LOAD TX BUFFER
                n = (b >> 1) & 3
                self.ptr = 0x31 + 0x10 * n + (5 if b & 1 else 0)
                self.phase = _P_WRITE
            elif b & 0xF8 == 0x80:  # RTS
                for n in range(3):
                    if b & (1 << n):
                        self.regs[0x30 + 0x10 * n] |= 0x08
                self.phase = _P_DEAD
            else:
                self.violations += 1
                self.phase = _P_DEAD
            return 0
        if p == _P_ADDR_R:
            self.ptr = b
            self.phase = _P_READ
            return 0
        if p == _P_READ:
            v = self._read_reg(self.ptr)
            self.ptr = (self.ptr + 1) & 0x7F
            return v
        if p == _P_ADDR_W:
            self.ptr = b
            self.phase = _P_WRITE
            return 0
        if p == _P_WRITE:
            self._write_reg(self.ptr, b)
            self.ptr = (self.ptr + 1) & 0x7F
            return 0
        if p == _P_BM_ADDR:
            self.bm_addr = b & 0x7F
            self.phase = _P_BM_MASK
            return 0
        if p == _P_BM_MASK:
            # registers without bit-modify support take the mask as 0xFF
            self.bm_mask = b if _BITMOD_OK[self.bm_addr] else 0xFF
            self.phase = _P_BM_DATA
            return 0
        if p == _P_BM_DATA:
            a = self.bm_addr
            m = self.bm_mask
            cur = self.regs[0x0F] if a & 0x0F == 0x0F else self.regs[a]
            self._write_reg(a, (cur & ~m & 0xFF) | (b & m))
            self.phase = _P_DEAD
            return 0
        if p == _P_STATUS:
            return self._status()
        if p == _P_RXSTATUS:
            return self._rx_status()
        return 0

    # -- bus side
    def _match(self, fbase, mbase, can_id, ext, d0, d1):
        r = self.regs
        m_sid = (r[mbase] << 3) | (r[mbase + 1] >> 5)
        f_sid = (r[fbase] << 3) | (r[fbase + 1] >> 5)
        f_ext = 1 if r[fbase + 1] & 0x08 else 0
        if f_ext != ext:
            return False
        m_eid = ((r[mbase + 1] & 3) << 16) | (r[mbase + 2] << 8) | r[mbase + 3]
        f_eid = ((r[fbase + 1] & 3) << 16) | (r[fbase + 2] << 8) | r[fbase + 3]
        if ext:
            sid = can_id >> 18
            eid = can_id & 0x3FFFF
        else:
            sid = can_id
            eid = (d0 << 8) | d1  # standard frames: the EID bits meet data bytes 0 and 1
            m_eid &= 0xFFFF
            f_eid &= 0xFFFF
        return (sid ^ f_sid) & m_sid == 0 and (eid ^ f_eid) & m_eid == 0

    def _accepts(self, buf, can_id, ext, d0, d1):
        r = self.regs
        ctrl = r[0x60 if buf == 0 else 0x70]
        if ctrl & 0x60 == 0x60:
            return 7  # masks/filters off
        if buf == 0:
            for n, fb in ((0, 0x00), (1, 0x04)):
                if self._match(fb, 0x20, can_id, ext, d0, d1):
                    return n
            return -1
        for n, fb in ((2, 0x08), (3, 0x10), (4, 0x14), (5, 0x18)):
            if self._match(fb, 0x24, can_id, ext, d0, d1):
                return n
        return -1

    def _load(self, buf, can_id, ext, rtr, data, n, hit):
        r = self.regs
        base = 0x61 if buf == 0 else 0x71
        if ext:
            sid = can_id >> 18
            r[base] = sid >> 3
            r[base + 1] = ((sid & 7) << 5) | 0x08 | ((can_id >> 16) & 3)
            r[base + 2] = (can_id >> 8) & 0xFF
            r[base + 3] = can_id & 0xFF
            r[base + 4] = (0x40 if rtr else 0) | n
        else:
            r[base] = can_id >> 3
            r[base + 1] = ((can_id & 7) << 5) | (0x10 if rtr else 0)
            r[base + 2] = 0
            r[base + 3] = 0
            r[base + 4] = n
        for i in range(n if not rtr else 0):
            r[base + 5 + i] = data[i]
        ctrl = 0x60 if buf == 0 else 0x70
        if buf == 0:
            r[ctrl] = (r[ctrl] & 0xFE) | (hit & 1)
        else:
            r[ctrl] = (r[ctrl] & 0xF8) | (hit & 7)
        r[0x2C] |= 1 << buf

    def inject(self, can_id, data, n=-1, ext=False, rtr=False):
        # A frame from the bus. -> 0/1 buffer, -1 filtered out, -2 lost
        # (overflow), -3 not listening (config or sleep mode).
        if n < 0:
            n = len(data)
        mode = self.mode()
        if mode == 0x80 or mode == 0x20:
            return -3
        r = self.regs
        e = 1 if ext else 0
        d0 = data[0] if n > 0 and not rtr else 0
        d1 = data[1] if n > 1 and not rtr else 0
        h0 = self._accepts(0, can_id, e, d0, d1)
        if h0 >= 0:
            if not r[0x2C] & 1:
                self._load(0, can_id, ext, rtr, data, n, h0)
                return 0
            if r[0x60] & 0x04:  # BUKT: roll over into RXB1
                if not r[0x2C] & 2:
                    self._load(1, can_id, ext, rtr, data, n, h0)
                    return 1
                r[0x2D] |= 0x80
            else:
                r[0x2D] |= 0x40
            r[0x2C] |= 0x20
            return -2
        h1 = self._accepts(1, can_id, e, d0, d1)
        if h1 >= 0:
            if not r[0x2C] & 2:
                self._load(1, can_id, ext, rtr, data, n, h1)
                return 1
            r[0x2D] |= 0x80
            r[0x2C] |= 0x20
            return -2
        return -1

    def transmit(self, record=True):
        # Send every requested buffer: higher TXP first, then the higher
        # buffer number (data sheet 3.2). -> number sent.
        r = self.regs
        if self.mode() not in (0x00, 0x40) or r[0x2D] & 0x20:
            return 0
        sent = 0
        for prio in (3, 2, 1, 0):
            for n in (2, 1, 0):
                ctrl = 0x30 + 0x10 * n
                if r[ctrl] & 0x08 and r[ctrl] & 3 == prio:
                    base = ctrl + 1
                    sidl = r[base + 1]
                    sid = (r[base] << 3) | (sidl >> 5)
                    ext = bool(sidl & 0x08)
                    cid = ((sid << 18) | ((sidl & 3) << 16) | (r[base + 2] << 8) | r[base + 3]) if ext else sid
                    dlc = r[base + 4] & 0x0F
                    rtr = bool(r[base + 4] & 0x40)
                    if record:
                        self.sent.append((cid, ext, rtr, bytes(r[base + 5:base + 5 + min(dlc, 8)])))
                    self.sent_count += 1
                    self.last_tx_id = cid
                    r[ctrl] &= ~0x08
                    r[0x2C] |= 0x04 << n
                    sent += 1
                    if self.mode() == 0x40:
                        self.inject(cid, r[base + 5:base + 13], min(dlc, 8), ext, rtr)
        return sent

    def tx_errors(self, n):
        if not self.regs[0x2D] & 0x20:
            self.tec += 8 * n
        self._update_eflg()

    def rx_errors(self, n):
        self.rec += n
        self._update_eflg()

    def set_counters(self, tec, rec):
        self.tec = tec
        self.rec = rec
        self._update_eflg()

    def message_error(self):
        self.regs[0x2C] |= 0x80


class _Spi:
    def __init__(self, m):
        self.m = m

    def write(self, buf):
        m = self.m
        if m.hook is not None:
            m.hook()
        for i in range(len(buf)):
            m.xfer(buf[i])

    def readinto(self, buf, write_byte=0):
        m = self.m
        for i in range(len(buf)):
            buf[i] = m.xfer(write_byte)

    def write_readinto(self, tx, rx):
        m = self.m
        for i in range(len(tx)):
            rx[i] = m.xfer(tx[i])


class _Pin:
    def __init__(self, m, role):
        self.m = m
        self.role = role  # 0 CS (output), 1 INT (input)

    def value(self, v=None):
        m = self.m
        if self.role == 0:
            if v is not None:
                m.cs_edge(v)
            return 1 if not m.cs_low else 0
        # INT: low while an enabled interrupt flag is set
        return 0 if m.regs[0x2C] & m.regs[0x2B] else 1


import json
from v2g.can import Frame
from v2g.can.mcp2515 import MCP2515, bit_timing
"""


@pytest.fixture
def run(mpy):
    def go(body):
        res = mpy(MODEL + "\n" + body)
        return res.json()

    return go


def decode_cnf(cnf1, cnf2, cnf3):
    brp = cnf1 & 0x3F
    sjw = (cnf1 >> 6) + 1
    assert cnf2 & 0x80, "BTLMODE: PS2 must come from CNF3"
    ps1 = ((cnf2 >> 3) & 7) + 1
    prseg = (cnf2 & 7) + 1
    ps2 = (cnf3 & 7) + 1
    return brp, sjw, prseg, ps1, ps2


# ------------------------------------------------------------ bit timing


@pytest.mark.parametrize("osc_hz,bitrate", [(8_000_000, 500_000), (8_000_000, 250_000),
                                            (16_000_000, 500_000), (16_000_000, 250_000)])
def test_bit_timing_registers_are_exact_and_legal(run, osc_hz, bitrate):
    got = run(f"""
m = Model()
bus = MCP2515(m.spi, m.cs, osc_hz={osc_hz}, bitrate={bitrate})
r = m.regs
print(json.dumps({{"cnf": list(bit_timing({osc_hz}, {bitrate})), "regs": [r[0x2A], r[0x29], r[0x28]],
                  "mode": m.mode(), "viol": m.config_violations}}))
""")
    cnf1, cnf2, cnf3 = got["cnf"]
    assert got["regs"] == [cnf1, cnf2, cnf3], "CNF1/2/3 written to the chip as computed"
    assert got["viol"] == 0 and got["mode"] == 0x00
    brp, sjw, prseg, ps1, ps2 = decode_cnf(cnf1, cnf2, cnf3)
    nq = 1 + prseg + ps1 + ps2
    # data sheet rules
    assert 8 <= nq <= 25
    assert 1 <= prseg <= 8 and 1 <= ps1 <= 8 and 2 <= ps2 <= 8
    assert sjw <= min(4, ps1, ps2)
    assert prseg + ps1 >= ps2
    # exactly the bit rate: bit = nq * 2 * (brp + 1) / osc
    assert osc_hz == bitrate * nq * 2 * (brp + 1)
    sample_point = (1 + prseg + ps1) / nq
    assert 0.75 <= sample_point <= 0.875


def test_known_bit_timing_values(run):
    got = run("""
print(json.dumps([list(bit_timing(o, b)) for o, b in
                  ((8000000, 500000), (8000000, 250000), (16000000, 500000), (16000000, 250000))]))
""")
    # 8 TQ bits: sync 1 + PRSEG 3 + PS1 2 + PS2 2, SJW 2, sampled at 75 %;
    # 16 TQ bits: 1 + 7 + 6 + 2, SJW 2, sampled at 87.5 %. 16 MHz at 250k
    # needs the prescaler (BRP 1) to stay within 25 TQ.
    assert got == [[0x40, 0x8A, 0x01], [0x40, 0xAE, 0x01], [0x40, 0xAE, 0x01], [0x41, 0xAE, 0x01]]


@pytest.mark.parametrize("osc_hz,bitrate", [(8_000_000, 1_000_000), (8_000_000, 83_333),
                                            (16_000_000, 2_000_000), (4_000_000, 500_000),
                                            (8_000_000, 0)])
def test_impossible_bit_timing_is_refused(run, osc_hz, bitrate):
    got = run(f"""
try:
    bit_timing({osc_hz}, {bitrate})
    r = "accepted"
except ValueError as e:
    r = "ValueError"
m = Model()
try:
    MCP2515(m.spi, m.cs, osc_hz={osc_hz}, bitrate={bitrate})
    r2 = "accepted"
except ValueError:
    r2 = "ValueError"
print(json.dumps([r, r2, m.transactions]))
""")
    assert got == ["ValueError", "ValueError", 0], "refused before touching the chip"


# ------------------------------------------------------------ init


def test_init_resets_configures_and_goes_normal(run):
    got = run("""
m = Model()
m.mode_lag = 3  # the chip takes a few reads to change mode: the driver must poll
bus = MCP2515(m.spi, m.cs, osc_hz=16000000, bitrate=500000)
r = m.regs
print(json.dumps({"reset": m.instr_hist[0xC0], "mode": m.mode(), "inte": r[0x2B], "intf": r[0x2C],
                  "rxb0": r[0x60], "rxb1": r[0x70], "viol": m.violations, "cfgviol": m.config_violations,
                  "cs_idle": m.cs.value(), "state": bus.state()}))
""")
    assert got["reset"] == 1
    assert got["mode"] == 0x00, "normal mode"
    assert got["inte"] == 0x23, "RX0IE | RX1IE | ERRIE drive the INT pin"
    assert got["intf"] == 0
    assert got["rxb0"] & 0x64 == 0x64, "RXB0: any frame, rollover into RXB1"
    assert got["rxb1"] & 0x60 == 0x60
    assert got["viol"] == 0 and got["cfgviol"] == 0 and got["cs_idle"] == 1
    assert got["state"] == "active"


def test_missing_chip_is_an_oserror(run):
    got = run("""
m = Model(absent=True)
try:
    MCP2515(m.spi, m.cs)
    r = "ok"
except OSError as e:
    r = "OSError %d" % e.errno
print(json.dumps([r, m.cs.value()]))
""")
    assert got == ["OSError 19", 1], "ENODEV, and CS released"


def test_listen_and_loopback_modes(run):
    got = run("""
m = Model()
b = MCP2515(m.spi, m.cs, mode="listen")
l = m.mode()
m2 = Model()
b2 = MCP2515(m2.spi, m2.cs, mode="loopback")
b2.send(0x123, b"\\x01\\x02")
m2.transmit()
f = Frame()
ok = b2.recv_into(f)
try:
    MCP2515(Model().spi, Model().cs, mode="fast")
    bad = "accepted"
except ValueError:
    bad = "ValueError"
print(json.dumps([l, m2.mode(), ok, f.id, list(f.data[:f.dlc]), bad]))
""")
    assert got == [0x60, 0x40, True, 0x123, [1, 2], "ValueError"]


# ------------------------------------------------------------ TX


def test_tx_loads_buffer_and_requests_send(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
ok = bus.send(0x108, b"\\x01\\xf4\\x01\\x0f\\xb3\\x01\\x00\\x00")
r = m.regs
txb2 = list(r[0x50:0x5E])
rts = m.instr_hist[0x84]
load = m.instr_hist[0x44]
n = m.transmit()
ok2 = bus.send(0x1ABCDEF5, b"\\xAA", ext=True)
m.transmit()
print(json.dumps({"ok": ok, "txb2": txb2, "rts": rts, "load": load, "n": n,
                  "sent": [[s[0], s[1], s[2], list(s[3])] for s in m.sent],
                  "tx_frames": bus.tx_frames, "intf": r[0x2C], "viol": m.violations}))
""")
    assert got["ok"] is True and got["load"] == 1 and got["rts"] == 1
    ctrl, sidh, sidl, eid8, eid0, dlc, *data = got["txb2"]
    assert ctrl & 0x08, "TXREQ set by RTS"
    assert (sidh << 3 | sidl >> 5) == 0x108 and not sidl & 0x08, "standard ID in SIDH/SIDL, EXIDE clear"
    assert dlc == 8 and data == [0x01, 0xF4, 0x01, 0x0F, 0xB3, 0x01, 0x00, 0x00]
    assert got["sent"] == [[0x108, False, False, [1, 0xF4, 1, 0x0F, 0xB3, 1, 0, 0]],
                           [0x1ABCDEF5, True, False, [0xAA]]]
    assert got["tx_frames"] == 2 and got["viol"] == 0


def test_tx_buffers_full_and_queue_order(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
res = [bus.send(0x100 + i, bytes([i])) for i in range(4)]
m.transmit()
after = bus.send(0x200, b"")
m.transmit()
print(json.dumps({"res": res, "after": after, "order": [s[0] for s in m.sent], "tx": bus.tx_frames}))
""")
    assert got["res"] == [True, True, True, False], "three TX buffers, then 'full'"
    assert got["after"] is True
    assert got["order"] == [0x100, 0x101, 0x102, 0x200], "frames queued together leave in queue order"
    assert got["tx"] == 4


def test_send_rejects_bad_frames(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
out = []
for args in ((0x800, b""), (0x100, b"123456789"), (-1, b"")):
    try:
        bus.send(*args)
        out.append("sent")
    except ValueError:
        out.append("ValueError")
print(json.dumps([out, bus.tx_frames]))
""")
    assert got == [["ValueError", "ValueError", "ValueError"], 0]


# ------------------------------------------------------------ RX


def test_rx_both_buffers_rollover_and_overflow(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
f = Frame()
where = [m.inject(0x100, b"\\x00\\x00\\x00\\x00\\xB3\\x01\\x64\\x00"),
         m.inject(0x102, b"\\x02\\x9A\\x01\\x00\\x00\\xC8\\x49\\x00"),
         m.inject(0x12345678, b"\\x09", ext=True)]
got = []
while bus.recv_into(f):
    got.append([f.id, f.ext, f.rtr, f.dlc, list(f.data[:f.dlc])])
eflg_after = m.regs[0x2D]
# an extended remote frame and a standard remote frame
m.inject(0x1FFFFFFF, b"", 4, ext=True, rtr=True)
m.inject(0x7FF, b"", 2, rtr=True)
while bus.recv_into(f):
    got.append([f.id, f.ext, f.rtr, f.dlc, []])
print(json.dumps({"where": where, "got": got, "ovf": bus.rx_overflows, "eflg": eflg_after,
                  "intf": m.regs[0x2C], "rx": bus.rx_frames, "read_rxb": [m.instr_hist[0x90], m.instr_hist[0x94]]}))
""")
    assert got["where"] == [0, 1, -2], "RXB0, rollover to RXB1, then lost"
    assert got["got"][:2] == [[0x100, False, False, 8, [0, 0, 0, 0, 0xB3, 1, 0x64, 0]],
                              [0x102, False, False, 8, [2, 0x9A, 1, 0, 0, 0xC8, 0x49, 0]]]
    assert got["got"][2:] == [[0x1FFFFFFF, True, True, 4, []], [0x7FF, False, True, 2, []]]
    assert got["ovf"] == 1, "the lost frame is counted"
    assert got["eflg"] & 0xC0 == 0, "overflow flags cleared after counting"
    assert got["intf"] & 0x23 == 0
    assert got["rx"] == 4
    assert got["read_rxb"] == [2, 2], "one READ RX BUFFER per frame, from both buffers"


def test_rx_without_rollover_flags_rx0ovr(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
m.regs[0x60] &= ~0x04  # a chip left without BUKT (not what the driver sets)
m.inject(0x100, b"\\x01")
r = m.inject(0x101, b"\\x02")
f = Frame()
n = 0
while bus.recv_into(f):
    n += 1
print(json.dumps([r, n, bus.rx_overflows]))
""")
    assert got == [-2, 1, 1]


def test_dlc_above_8_reads_8_bytes(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
m.inject(0x321, b"ABCDEFGH")
m.regs[0x65] = 0x0F  # DLC 15 on the wire: still 8 data bytes
f = Frame()
bus.recv_into(f)
print(json.dumps([f.dlc, bytes(f.data).decode()]))
""")
    assert got == [8, "ABCDEFGH"]


# ------------------------------------------------------------ filters


def test_filters_chademo_ids_all_get_the_rollover_path(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
ids = (0x100, 0x101, 0x102, 0x110, 0x200, 0x201)
bus.set_filters(ids)
hw = {}
seen = {}
f = Frame()
for cid in (0x100, 0x101, 0x102, 0x110, 0x200, 0x201, 0x103, 0x108, 0x300, 0x000, 0x7FF):
    hw[hex(cid)] = m.inject(cid, b"\\x55\\xAA\\x00")  # data must not matter for standard frames
    seen[hex(cid)] = bus.recv_into(f) and f.id == cid
    while bus.recv_into(f):
        pass
hw["ext"] = m.inject(0x100 << 18, b"", ext=True)  # same ID bits, extended: rejected
# a car's burst while nobody reads: every ID has two buffers (RXB0 + rollover)
burst = []
for a, b in ((0x100, 0x101), (0x102, 0x200), (0x110, 0x201), (0x201, 0x100)):
    burst.append([m.inject(a, b"\\x01"), m.inject(b, b"\\x02")])
    got = []
    while bus.recv_into(f):
        got.append(f.id)
    burst[-1].append(got)
print(json.dumps({"hw": hw, "seen": seen, "burst": burst, "mode": m.mode(),
                  "cfgviol": m.config_violations, "rxb0": m.regs[0x60], "rxb1": m.regs[0x70]}))
""")
    for cid in ("0x100", "0x101", "0x102", "0x110", "0x200", "0x201"):
        assert got["hw"][cid] == 0 and got["seen"][cid], cid
    assert got["hw"]["0x103"] == 0 and not got["seen"]["0x103"], \
        "admitted by the shared mask, dropped by the software filter"
    for cid in ("0x108", "0x300", "0x0", "0x7ff", "ext"):
        assert got["hw"][cid] == -1, f"{cid} kept out by the hardware"
        assert not got["seen"].get(cid), cid
    for a_where, b_where, order in got["burst"]:
        assert (a_where, b_where) == (0, 1), "RXB0 then rollover into RXB1"
        assert len(order) == 2
    assert got["mode"] == 0 and got["cfgviol"] == 0, "written in configuration mode, back to normal"
    assert got["rxb0"] & 0x60 == 0 and got["rxb1"] & 0x60 == 0, "filters on"
    assert got["rxb0"] & 0x04, "rollover kept"


def test_filters_many_ids_and_back_to_all(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
ids = (0x100, 0x101, 0x102, 0x103, 0x200, 0x201, 0x202, 0x203, 0x350, 0x351, 0x352, 0x353)
bus.set_filters(ids)
f = Frame()
hw = {}
sw = {}
for cid in ids + (0x104, 0x204, 0x300, 0x7FF):
    hw[hex(cid)] = m.inject(cid, b"\\x01")
    sw[hex(cid)] = bus.recv_into(f) and f.id == cid
    while bus.recv_into(f):
        pass
bus.set_filters([0x123])
one = [m.inject(0x123, b""), m.inject(0x124, b"")]
while bus.recv_into(f):
    pass
bus.set_filters(None)
after = m.inject(0x555, b"")
print(json.dumps({"hw": hw, "sw": sw, "one": one, "after": after, "rxb0": m.regs[0x60]}))
""")
    for cid in ("0x100", "0x103", "0x200", "0x203", "0x350", "0x353"):
        assert got["hw"][cid] >= 0 and got["sw"][cid], cid
    for cid in ("0x104", "0x204", "0x300", "0x7ff"):
        assert not got["sw"][cid], f"{cid} never reaches the caller"
    assert got["one"] == [0, -1], "a single ID is matched exactly"
    assert got["after"] == 0 and got["rxb0"] & 0x60 == 0x60, "None = accept everything again"


def test_filter_ids_are_validated(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
try:
    bus.set_filters([0x100, 0x800])
    r = "accepted"
except ValueError:
    r = "ValueError"
print(json.dumps(r))
""")
    assert got == "ValueError"


# ------------------------------------------------------------ errors


def test_error_states_bus_off_and_recovery(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs)
bus.set_filters((0x102,))
states = [bus.state()]
m.set_counters(100, 0); states.append(bus.state())
m.set_counters(0, 130); states.append(bus.state())
m.set_counters(130, 0); states.append(bus.state())
tec_rec = list(bus.error_counters())
m.tx_errors(20)  # TEC > 255: bus off
f = Frame()
bus.recv_into(f)  # ERRIF serviced here
states.append(bus.state())
send_off = bus.send(0x108, b"\\x00")
offs = bus.bus_off_count
bus.recover()
states.append(bus.state())
after = list(bus.error_counters())
filt = m.inject(0x103, b"") == -1 and m.inject(0x102, b"") >= 0
send_on = bus.send(0x108, b"\\x00")
m.message_error()
bus.recv_into(f)
print(json.dumps({"states": states, "tec_rec": tec_rec, "send_off": send_off, "offs": offs,
                  "after": after, "filt": filt, "send_on": send_on, "offs2": bus.bus_off_count,
                  "errors": bus.errors, "viol": m.violations}))
""")
    assert got["states"] == ["active", "warning", "passive", "passive", "bus_off", "active"]
    assert got["tec_rec"] == [130, 0]
    assert got["send_off"] is False, "no frame is queued while bus off"
    assert got["offs"] == 1 and got["offs2"] == 1
    assert got["after"] == [0, 0], "recovery clears TEC/REC"
    assert got["filt"] is True, "filters survive the recovery reset"
    assert got["send_on"] is True
    assert got["errors"] == 1, "MERRF counted"
    assert got["viol"] == 0


# ------------------------------------------------------------ INT pin, ring, IRQ


def test_int_pin_makes_idle_polls_free(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs, int_pin=m.int_pin)
f = Frame()
t0 = m.transactions
for _ in range(100):
    bus.recv_into(f)
idle = m.transactions - t0
m.inject(0x102, b"\\x01")
ok = bus.recv_into(f)
print(json.dumps([idle, ok, f.id]))
""")
    assert got == [0, True, 0x102], "no SPI traffic while INT is high"


def test_drain_ring_keeps_order_and_defers_inside_transactions(run):
    got = run("""
m = Model()
bus = MCP2515(m.spi, m.cs, int_pin=m.int_pin, rx_ring=8)
f = Frame()
# frames arrive faster than the main loop reads: the IRQ drains each into the ring
for i in range(6):
    m.inject(0x100 + i, bytes([i]))
    bus.irq_handler(None)  # schedules the drain ...
    bus._drain_cb(0)  # ... which runs between bytecodes
order = []
while bus.recv_into(f):
    order.append(f.id)
# a scheduled drain that lands in the middle of a send() transaction
m.inject(0x1F0, b"\\xEE")
def hook():
    m.hook = None
    bus._drain_cb(0)
m.hook = hook
bus.send(0x108, b"\\x00")
ring_after_send = bus._ring_len
bus.recv_into(f)
# ring overflow: more frames than the ring holds
for i in range(10):
    m.inject(0x200 + i, b"")
    bus.drain()
n = 0
while bus.recv_into(f):
    n += 1
print(json.dumps({"order": order, "viol": m.violations, "ring_after_send": ring_after_send,
                  "n": n, "ring_ovf": bus.ring_overflows,
                  "rx_ovf": bus.rx_overflows}))
""")
    assert got["order"] == [0x100 + i for i in range(6)]
    assert got["viol"] == 0, "the deferred drain never interleaved with a transaction"
    assert got["ring_after_send"] == 1, "the drain ran right after the transaction"
    assert got["n"] == 10, "8 in the ring + 2 still in the chip's buffers"
    assert got["ring_ovf"] >= 1


# ------------------------------------------------------------ allocation


def test_no_heap_allocation_per_frame(run):
    got = run("""
import gc
m = Model()
bus = MCP2515(m.spi, m.cs, int_pin=m.int_pin)
bus.set_filters((0x100, 0x101, 0x102, 0x200))
f = Frame()
d = bytearray(b"\\x02\\x9A\\x01\\x00\\x00\\xC8\\x49\\x00")
tx = bytearray(8)
ids = (0x100, 0x101, 0x102, 0x200, 0x300)
# warm up every path once
m.inject(0x102, d, 8); bus.recv_into(f); bus.send(0x108, tx); m.transmit(False); bus.state()
m.inject(0x102, d, 8); bus.drain(); bus.recv_into(f)
gc.collect()
n = 0
micropython.heap_lock()
try:
    for i in range(2000):
        d[6] = i & 0xFF
        m.inject(ids[i % 5], d, 8)
        m.inject(0x200, d, 8)
        if i & 1:
            bus.drain()
        while bus.recv_into(f):
            n += 1
        tx[0] = i & 0xFF
        bus.send(0x109, tx)
        m.transmit(False)
    r = "ok"
except MemoryError:
    r = "allocated"
micropython.heap_unlock()
print(json.dumps([r, n, bus.rx_frames, m.sent_count]))
""")
    assert got[0] == "ok"
    assert got[1] == got[2] - 2 == 2000 + 1600, "every accepted frame arrived (0x300 filtered out)"
    assert got[3] >= 2000


# ------------------------------------------------------------ hal.can_build


FAKE_MACHINE = r"""
import sys
class _FakeMachine:
    # What hal.can_build asks of `machine`, backed by the MCP2515 model.
    made = []
    model = None
    board = None
    class Pin:
        OUT = 1
        IN = 0
        PULL_UP = 2
        IRQ_FALLING = 4
        def __init__(self, pid, mode=None, pull=None, value=None):
            self.pid = pid
            self.args = (mode, pull, value)
            self.irq_args = None
            _FakeMachine.made.append(("Pin", pid, mode, pull, value))
        def value(self, v=None):
            m = _FakeMachine.model
            c = _FakeMachine.board
            if self.pid == c["cs"]:
                return m.cs.value(v)
            if self.pid == c["int"]:
                return m.int_pin.value()
            return 0
        def irq(self, trigger=0, handler=None):
            self.irq_args = (trigger, handler)
            _FakeMachine.made.append(("irq", self.pid, trigger))
    class SPI:
        def __init__(self, sid, baudrate=0, polarity=0, phase=0, sck=None, mosi=None, miso=None):
            _FakeMachine.made.append(("SPI", sid, baudrate, polarity, phase, sck.pid, mosi.pid, miso.pid))
            self._s = _FakeMachine.model.spi
        def write(self, b):
            self._s.write(b)
        def readinto(self, b, w=0):
            self._s.readinto(b, w)
sys.modules["machine"] = _FakeMachine
from v2g.hal.can_build import vehicle_bus
"""


def test_vehicle_bus_builds_the_mcp2515_from_the_board_config(run):
    board = json.loads((__import__("conftest").ROOT / "board_configs" / "rp2040_pico_w.json").read_text())
    got = run(FAKE_MACHINE + f"""
board = json.loads({json.dumps(json.dumps(board))})
_FakeMachine.board = board["can"]
m = Model()
_FakeMachine.model = m
bus = vehicle_bus({{"vehicle": {{"link": "can"}}}}, board)
m.inject(0x102, b"\\x01")
f = Frame()
ok = bus.recv_into(f)
print(json.dumps({{"made": _FakeMachine.made, "type": type(bus).__name__, "cnf": [m.regs[0x2A], m.regs[0x29], m.regs[0x28]],
                  "ok": ok, "id": f.id, "mode": m.mode()}}))
""")
    c = board["can"]
    made = [tuple(x) for x in got["made"]]
    assert ("SPI", c["spi"], c["spi_baud"], 0, 0, c["sck"], c["mosi"], c["miso"]) in made
    assert ("Pin", c["cs"], 1, None, 1) in made, "CS an output, idle high"
    assert ("Pin", c["int"], 0, 2, None) in made, "INT an input with pull-up"
    assert ("irq", c["int"], 4) in made, "INT falling edge drains the chip"
    assert got["type"] == "MCP2515" and got["mode"] == 0
    assert got["cnf"] == [0x40, 0x8A, 0x01], "8 MHz crystal, 500 kbit/s from the board config"
    assert got["ok"] and got["id"] == 0x102


def test_vehicle_bus_refuses_a_board_without_can(run):
    got = run(FAKE_MACHINE + """
try:
    vehicle_bus({"vehicle": {"link": "can"}}, {"can": None})
    r = "built"
except ValueError:
    r = "ValueError"
print(json.dumps(r))
""")
    assert got == "ValueError"


# ------------------------------------------------------------ machine.CAN adapter


FAKE_CAN = r"""
from v2g.can.machine_can import MachineCanBus

class FakeCAN:
    # the documented mainline machine.CAN API (docs/library/machine.CAN.rst)
    FLAG_RTR = 1
    FLAG_EXT_ID = 2
    FLAG_UNORDERED = 4
    RECV_ERR_FULL = 1
    RECV_ERR_OVERRUN = 2
    STATE_STOPPED = 0
    STATE_ACTIVE = 1
    STATE_WARNING = 2
    STATE_PASSIVE = 3
    STATE_BUS_OFF = 4
    FILTERS_MAX = 4
    TX_QUEUE_LEN = 3
    def __init__(self):
        self.rx = []  # (id, data, flags, errors); rx_i: next to hand out
        self.rx_i = 0
        self.tx = []
        self.st = 1
        self.filters = "unset"
        self.restarts = 0
        self.views = None
        self.log = True
    def set_filters(self, f):
        if f is not None and len(f) > self.FILTERS_MAX:
            raise ValueError("too many filters")
        self.filters = f
    def send(self, cid, data, flags=0):
        if self.st == self.STATE_BUS_OFF:
            raise OSError(5)
        if len(self.tx) >= self.TX_QUEUE_LEN:
            return None
        if self.log:
            self.tx.append((cid, bytes(data), flags))
        return 0
    def recv(self, arg=None):
        if self.rx_i >= len(self.rx):
            return None
        cid, data, flags, errs = self.rx[self.rx_i]
        self.rx_i += 1
        if self.views is None:
            self._make_views(arg[1])
        full = self.views[8]
        for i in range(len(data)):
            full[i] = data[i]
        arg[0] = cid
        arg[1] = self.views[len(data)]
        arg[2] = flags
        arg[3] = errs
        return arg
    def _make_views(self, mv):
        # Its own method: a comprehension in recv() would capture `arg` in a
        # cell, and that cell is allocated on every call.
        self.views = [mv[:n] for n in range(9)]
    def state(self):
        return self.st
    def restart(self):
        self.restarts += 1
        self.st = self.STATE_ACTIVE
"""


def test_machine_can_adapter(run):
    got = run(FAKE_CAN + r"""
can = FakeCAN()
bus = MachineCanBus(can)
out = {"filters0": can.filters}
out["send"] = [bus.send(0x108, b"\x01\x02"), bus.send(0x18DAF110, b"", ext=True), bus.send(0x7FF, b"12345678"),
               bus.send(0x100, b"")]
out["tx"] = [[c, d.hex(), fl] for c, d, fl in can.tx]
can.rx_i = 0
can.rx = [(0x102, b"\x02\x9A\x01\x00\x00\xC8\x49\x00", 0, 0), (0x1ABCDEF, b"\xAA", 2, 2),
          (0x123, b"\x00\x00", 1, 0), (0x7FF, b"", 0, 0)]
f = Frame()
got = []
while bus.recv_into(f):
    got.append([f.id, f.ext, f.rtr, f.dlc, bytes(f.data[:f.dlc]).hex()])
out["got"] = got
out["ovf"] = bus.rx_overflows
states = []
for st in (1, 2, 3, 0, 4):
    can.st = st
    states.append(bus.state())
out["states"] = states
out["send_off"] = bus.send(0x100, b"")
bus.recover()
out["after"] = [bus.state(), can.restarts, bus.bus_off_count]
bus.set_filters([0x100, 0x102])
out["filters"] = can.filters
bus.set_filters([0x100, 0x101, 0x102, 0x110, 0x200, 0x201])
out["filters6"] = can.filters
can.rx_i = 0
can.rx = [(0x300, b"\x01", 0, 0), (0x201, b"\x02", 0, 0)]
out["soft"] = [bus.recv_into(f), f.id]
print(json.dumps(out))
""")
    assert got["filters0"] is None, "machine.CAN receives nothing until filters are set"
    assert got["send"] == [True, True, True, False], "a full queue is False, not an exception"
    assert got["tx"] == [[0x108, "0102", 0], [0x18DAF110, "", 2], [0x7FF, "3132333435363738", 0]]
    assert got["got"] == [[0x102, False, False, 8, "029a010000c84900"], [0x1ABCDEF, True, False, 1, "aa"],
                          [0x123, False, True, 2, "0000"], [0x7FF, False, False, 0, ""]]
    assert got["ovf"] == 1
    assert got["states"] == ["active", "warning", "passive", "bus_off", "bus_off"]
    assert got["send_off"] is False
    assert got["after"] == ["active", 1, 1]
    assert got["filters"] == [[0x100, 0x7FF, 0], [0x102, 0x7FF, 0]]
    assert got["filters6"] is None, "beyond FILTERS_MAX: take all, filter in software"
    assert got["soft"] == [True, 0x201]


def test_machine_can_adapter_allocates_nothing(run):
    got = run(FAKE_CAN + r"""
import gc
can = FakeCAN()
can.log = False
bus = MachineCanBus(can)
frames = [(0x102, b"\x02\x9A\x01\x00\x00\xC8\x49\x00", 0, 0), (0x200, b"\xF0", 0, 0)]
f = Frame()
can.rx = list(frames)
while bus.recv_into(f):
    pass
can.rx = [frames[i & 1] for i in range(2000)]
can.rx_i = 0
tx = bytearray(8)
gc.collect()
n = 0
micropython.heap_lock()
try:
    for i in range(2000):
        while bus.recv_into(f):
            n += 1
        bus.send(0x109, tx)
    r = "ok"
except MemoryError:
    r = "allocated"
micropython.heap_unlock()
print(json.dumps([r, n]))
""")
    assert got == ["ok", 2000]
