# test_can_mcp2515.py: a register-level model of the MCP2515 CAN controller,
# what the board would hand the driver (v2g.can.mcp2515): an SPI object and a
# CS pin object, plus the INT pin. It decodes the SPI instruction set byte
# by byte between CS edges (RESET, READ, WRITE, BIT MODIFY, READ STATUS, RX
# STATUS, READ RX BUFFER, LOAD TX BUFFER, RTS), keeps the register file with
# the data sheet's access rules (configuration-only registers, read-only
# bits, CANSTAT following CANCTRL a read later), and plays the bus side:
# acceptance masks and filters, RX buffers with rollover and overflow
# flags, transmission of requested buffers by priority, TEC/REC with the
# error-state flags and bus off. It never allocates on the SPI path, so the
# driver can be run under micropython.heap_lock().

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
