# MCP2515 stand-alone CAN controller on SPI, presented as the CanBus
# interface (v2g.can). Register map, instructions and bit timing rules are
# those of the Microchip MCP2515 data sheet (DS20001801).
#
# Hardware is injected (board.py / hal.can_build build it):
#   spi      machine.SPI-like: write(buf), readinto(buf, write_byte)
#   cs       machine.Pin-like output: value(v); idle high
#   int_pin  optional machine.Pin-like input: value() is 0 while the chip has
#            an enabled interrupt pending (RX0/RX1 full, error flag change)
#
# Design points (why, not what):
# - Two RX buffers with rollover (BUKT): a frame arriving while RXB0 is full
#   goes to RXB1 instead of being lost, so the host has two frame times of
#   slack. CHAdeMO cars send their frames in bursts ~10 ms apart, so a loop
#   that polls less often than that needs drain() run from the INT pin's IRQ
#   (hal.can_build wires it): it moves frames into a preallocated ring.
# - Acceptance filters send every wanted ID through RXB0 (two filters under
#   one mask, a small superset that software filtering trims), because only
#   RXB0's frames roll over: each ID keeps the two-buffer slack.
# - Frames are read with READ RX BUFFER, which also clears the buffer's RXnIF
#   when CS rises: one SPI transaction per frame, no separate flag write.
# - With an INT pin an idle recv_into() costs one pin read and no SPI at all.
# - drain() may run as a scheduled callback between any two bytecodes of the
#   main code. Every SPI transaction therefore runs with _busy set, and a
#   callback that finds it set only leaves a note for the main code to act
#   on when its transaction is over: chip select is never interleaved.
# - Buffers are preallocated; steady-state send/recv allocate nothing.
import time

import micropython
from micropython import const

from v2g.can import (
    STATE_ACTIVE,
    STATE_BUS_OFF,
    STATE_PASSIVE,
    STATE_WARNING,
    CanBus,
    Frame,
    check_frame,
)

# SPI instructions
_I_RESET = const(0xC0)
_I_READ = const(0x03)
_I_WRITE = const(0x02)
_I_BITMOD = const(0x05)
_I_READ_STATUS = const(0xA0)
_I_READ_RXB0 = const(0x90)  # READ RX BUFFER starting at RXB0SIDH
_I_READ_RXB1 = const(0x94)  # ... at RXB1SIDH
_I_LOAD_TXB0 = const(0x40)  # LOAD TX BUFFER at TXB0SIDH; +2 per buffer
_I_RTS = const(0x80)  # REQUEST TO SEND: | 1 TXB0, | 2 TXB1, | 4 TXB2

# Registers
_RXF0 = const(0x00)
_RXF3 = const(0x10)
_CANSTAT = const(0x0E)
_CANCTRL = const(0x0F)
_TEC = const(0x1C)
_RXM0 = const(0x20)
_CNF3 = const(0x28)  # CNF3, CNF2, CNF1, CANINTE, CANINTF are consecutive
_CANINTF = const(0x2C)
_EFLG = const(0x2D)
_RXB0CTRL = const(0x60)
_RXB1CTRL = const(0x70)

# CANCTRL.REQOP / CANSTAT.OPMOD (bits 7:5)
_MODE_MASK = const(0xE0)
_MODE_NORMAL = const(0x00)
_MODE_LOOPBACK = const(0x40)
_MODE_LISTEN = const(0x60)
_MODE_CONFIG = const(0x80)
_MODES = {"normal": _MODE_NORMAL, "loopback": _MODE_LOOPBACK, "listen": _MODE_LISTEN}

# CANINTE / CANINTF
_RX0IF = const(0x01)
_RX1IF = const(0x02)
_ERRIF = const(0x20)
_MERRF = const(0x80)
_INTE = const(0x23)  # RX0IE | RX1IE | ERRIE: what the INT pin reports

# EFLG
_EWARN = const(0x01)
_RXEP = const(0x08)
_TXEP = const(0x10)
_TXBO = const(0x20)
_RX0OVR = const(0x40)
_RX1OVR = const(0x80)

# RXBnCTRL
_RXM_ANY = const(0x60)  # masks and filters off: take every frame
_RXM_FILTER = const(0x00)  # take frames that pass a filter
_BUKT = const(0x04)  # RXB0 rolls over into RXB1 when full

# SIDL / DLC bits
_EXIDE = const(0x08)  # SIDL: extended identifier
_SRR = const(0x10)  # RX SIDL: standard remote request
_RTR = const(0x40)  # DLC register: remote request (TX; RX for extended)

# READ STATUS: TXREQ of TXB0, TXB1, TXB2
_ST_TXREQ0 = const(0x04)
_ST_TXREQ1 = const(0x10)
_ST_TXREQ2 = const(0x40)

_MODE_TRIES = const(20)  # mode changes take effect after the current frame
_RX_SPINS = const(4)  # bound on recv_into's loop over filtered-out frames

_NQ_MIN = const(8)  # time quanta per bit allowed by the data sheet
_NQ_MAX = const(25)


def bit_timing(osc_hz, bitrate):
    """(CNF1, CNF2, CNF3) for this crystal and bit rate, or ValueError.

    The bit time must be an exact whole number of time quanta:
        bit = (1 + PRSEG + PS1 + PS2) * TQ,  TQ = 2 * (BRP + 1) / osc_hz
    with 8..25 TQ, PRSEG and PS1 1..8, PS2 2..8, SJW <= min(4, PS1, PS2).
    The smallest prescaler (most quanta, finest resynchronisation) wins; the
    sample point aims at 87.5 % (CiA/J1939 practice for 250/500 kbit/s),
    never leaving PS2 under 2 TQ, so 8 TQ bits sample at 75 %.
    """
    if osc_hz <= 0 or bitrate <= 0 or bitrate > 1000000:
        raise ValueError("bitrate must be 1..1000000")
    for brp in range(64):
        div = 2 * (brp + 1) * bitrate
        if osc_hz % div:
            continue
        nq = osc_hz // div
        if nq > _NQ_MAX:
            continue
        if nq < _NQ_MIN:
            break  # a larger prescaler only gives fewer quanta
        ps2 = max(2, nq - (nq * 7 + 4) // 8)
        rest = nq - 1 - ps2  # PRSEG + PS1
        if rest > 16:
            continue
        ps1 = rest // 2
        prseg = rest - ps1
        sjw = min(4, ps1, ps2)
        cnf1 = ((sjw - 1) << 6) | brp
        cnf2 = 0x80 | ((ps1 - 1) << 3) | (prseg - 1)  # BTLMODE: PS2 from CNF3
        cnf3 = ps2 - 1
        return cnf1, cnf2, cnf3
    raise ValueError("%d bit/s cannot be made from a %d Hz crystal" % (bitrate, osc_hz))


def _filter_plan(ids):
    """(mask, filter_a, filter_b) admitting every ID in ids through RXB0.

    RXB0 has one mask and two filters, RXB1 one mask and four, but only
    frames accepted by RXB0 roll over into RXB1 when RXB0 is full: an ID
    that only RXB1's filters accept gets one buffer, not two. A CHAdeMO car
    sends four frames within ~30 ms, so every ID gets the two-deep path: the
    IDs are split into two groups, one per RXB0 filter, and the shared mask
    keeps the bits each group agrees on. The split that keeps the most mask
    bits (the smallest superset) wins; the software filter
    (CanBus._accepts) drops the few extra IDs the hardware lets through.
    Up to two IDs are matched exactly."""
    ids = sorted(set(ids))
    n = len(ids)
    if n <= 2:
        return 0x7FF, ids[0], ids[-1]
    if n > 10:
        # 2**(n-1) splits would be slow at start-up: sorted halves instead
        return _split_mask(ids[: n // 2], ids[n // 2:])
    best = None
    for bits in range(1 << (n - 1)):
        # bit i-1 of `bits` puts ids[i] with ids[0], else in the other group
        a = [ids[i] for i in range(n) if i == 0 or bits >> (i - 1) & 1]
        b = [ids[i] for i in range(1, n) if not bits >> (i - 1) & 1]
        plan = _split_mask(a, b or a)
        if best is None or _ones(plan[0]) > _ones(best[0]):
            best = plan
    return best


def _split_mask(a, b):
    diff = 0
    for i in a:
        diff |= i ^ a[0]
    for i in b:
        diff |= i ^ b[0]
    mask = ~diff & 0x7FF
    return mask, a[0] & mask, b[0] & mask


def _ones(x):
    n = 0
    while x:
        n += x & 1
        x >>= 1
    return n


def _std_id_regs(can_id):
    # SIDH, SIDL with EXIDE clear (standard frames only), EID8, EID0
    return bytes(((can_id >> 3) & 0xFF, (can_id & 7) << 5, 0, 0))


class MCP2515(CanBus):
    def __init__(self, spi, cs, osc_hz=8000000, bitrate=500000, int_pin=None,
                 mode="normal", rx_ring=8):
        super().__init__()
        self._spi = spi
        self._cs = cs
        self._int = int_pin
        if mode not in _MODES:
            raise ValueError("mode must be normal, listen or loopback")
        self._mode = _MODES[mode]
        self.cnf = bit_timing(osc_hz, bitrate)
        self.osc_hz = osc_hz
        self.bitrate = bitrate
        self._filters = None  # the ID list set_filters() was given

        self._one = bytearray(1)  # one-byte commands and register reads
        self._cmd2 = bytearray(2)  # instruction + address
        self._cmd4 = bytearray(4)  # BIT MODIFY: instruction, address, mask, data
        self._rxb = bytearray(13)  # SIDH SIDL EID8 EID0 DLC D0..D7
        self._txb = bytearray(14)  # LOAD TX BUFFER instruction + the same 13
        mv = memoryview(self._txb)
        self._txv = tuple(mv[:6 + n] for n in range(9))  # one view per DLC
        self._two = bytearray(2)
        self._eflg = 0  # last EFLG read
        self._bus_off = False

        # Software RX ring filled by drain(); slots are preallocated Frames.
        self._ring = [Frame() for _ in range(max(1, rx_ring))]
        self._ring_head = 0  # next slot to read
        self._ring_len = 0
        self.ring_overflows = 0  # drain() found the ring full (frames left in the chip)

        self._busy = False
        self._drain_pending = False
        # Bound once: creating a bound method allocates, an IRQ must not.
        self._drain_cb = self._scheduled_drain
        self.init()

    # ------------------------------------------------------------ SPI layer

    def _begin(self):
        self._cs.value(0)

    def _end(self):
        self._cs.value(1)

    def _read(self, addr):
        c = self._cmd2
        c[0] = _I_READ
        c[1] = addr
        self._begin()
        self._spi.write(c)
        self._spi.readinto(self._one, 0)
        self._end()
        return self._one[0]

    def _read2(self, addr):
        c = self._cmd2
        c[0] = _I_READ
        c[1] = addr
        self._begin()
        self._spi.write(c)
        self._spi.readinto(self._two, 0)
        self._end()
        return self._two

    def _write(self, addr, data):
        # Configuration only (allocates the command); not on a hot path.
        self._begin()
        self._spi.write(bytes((_I_WRITE, addr)) + bytes(data))
        self._end()

    def _bitmod(self, addr, mask, value):
        c = self._cmd4
        c[0] = _I_BITMOD
        c[1] = addr
        c[2] = mask
        c[3] = value
        self._begin()
        self._spi.write(c)
        self._end()

    def _command(self, instr):
        o = self._one
        o[0] = instr
        self._begin()
        self._spi.write(o)
        self._end()

    def _read_status(self):
        o = self._one
        o[0] = _I_READ_STATUS
        self._begin()
        self._spi.write(o)
        self._spi.readinto(o, 0)
        self._end()
        return o[0]

    def _set_mode(self, mode):
        self._bitmod(_CANCTRL, _MODE_MASK, mode)
        for _ in range(_MODE_TRIES):
            if self._read(_CANSTAT) & _MODE_MASK == mode:
                return
            time.sleep_ms(1)
        raise OSError(110)  # ETIMEDOUT: the chip never changed mode

    # ------------------------------------------------------------ set-up

    def init(self):
        """Reset the chip and bring it up: bit timing, RX buffers with
        rollover, interrupts, the filters last set, then the operating mode.
        Called by the constructor and by recover()."""
        self._busy = True
        try:
            self._command(_I_RESET)
            time.sleep_ms(2)  # oscillator start-up after reset (128 OSC1 cycles, with margin)
            if self._read(_CANSTAT) & _MODE_MASK != _MODE_CONFIG:
                # No chip (MISO floating reads 0x00 or 0xFF) or a dead clock.
                raise OSError(19)  # ENODEV
            cnf1, cnf2, cnf3 = self.cnf
            self._write(_CNF3, (cnf3, cnf2, cnf1, _INTE, 0))  # ... CANINTE, CANINTF
            self._program_filters()
            self._set_mode(self._mode)
            self._eflg = 0
            self._bus_off = False
        finally:
            self._release()

    def _program_filters(self):
        # Config mode only: the chip ignores these registers otherwise.
        ids = self._filters
        if ids is None:
            self._write(_RXB0CTRL, (_RXM_ANY | _BUKT,))
            self._write(_RXB1CTRL, (_RXM_ANY,))
            return
        mask, fa, fb = _filter_plan(ids)
        fa = _std_id_regs(fa)
        fb = _std_id_regs(fb)
        # RXB1 gets the same mask and filters: it then takes nothing that
        # RXB0 would not, and its frames arrive through rollover.
        self._write(_RXF0, fa + fb + fa)  # RXF0, RXF1, RXF2
        self._write(_RXF3, fb + fa + fb)  # RXF3, RXF4, RXF5
        # Mask EID bits 0: for standard frames the chip would otherwise
        # compare them against the first two data bytes.
        m = _std_id_regs(mask)
        self._write(_RXM0, m + m)
        self._write(_RXB0CTRL, (_RXM_FILTER | _BUKT,))
        self._write(_RXB1CTRL, (_RXM_FILTER,))

    def set_filters(self, ids):
        super().set_filters(ids)  # validates; software filter
        self._filters = None if ids is None else tuple(ids)
        self._busy = True
        try:
            self._set_mode(_MODE_CONFIG)
            self._program_filters()
            self._set_mode(self._mode)
        finally:
            self._release()

    # ------------------------------------------------------------ errors

    def _service_errors(self, intf):
        # ERRIF: an EFLG condition appeared; MERRF: a message error.
        eflg = self._read(_EFLG)
        self._eflg = eflg
        if eflg & _RX0OVR:
            self.rx_overflows += 1
        if eflg & _RX1OVR:
            self.rx_overflows += 1
        if eflg & (_RX0OVR | _RX1OVR):
            # The overflow bits are the only writable ones in EFLG.
            self._bitmod(_EFLG, _RX0OVR | _RX1OVR, 0)
        if intf & _MERRF:
            self.errors += 1
        self._note_bus_off(eflg)
        self._bitmod(_CANINTF, _ERRIF | _MERRF, 0)

    def _note_bus_off(self, eflg):
        off = bool(eflg & _TXBO)
        if off and not self._bus_off:
            self.bus_off_count += 1
        self._bus_off = off

    def state(self):
        self._busy = True
        try:
            eflg = self._read(_EFLG)
        finally:
            self._release()
        self._eflg = eflg
        self._note_bus_off(eflg)
        if eflg & _TXBO:
            return STATE_BUS_OFF
        if eflg & (_TXEP | _RXEP):
            return STATE_PASSIVE
        if eflg & _EWARN:
            return STATE_WARNING
        return STATE_ACTIVE

    def error_counters(self):
        """(TEC, REC) straight from the chip."""
        self._busy = True
        try:
            b = self._read2(_TEC)
            return b[0], b[1]
        finally:
            self._release()

    def recover(self):
        """Leave bus off. The MCP2515 would also recover by itself after 128
        x 11 recessive bits, but only on a working bus; a full reset clears
        TEC/REC now and restores every setting. Pending TX frames are lost."""
        self.init()

    # ------------------------------------------------------------ TX

    def send(self, can_id, data, ext=False):
        n = check_frame(can_id, data, ext)
        if self._bus_off:
            return False  # it would sit in the buffer until a recover()
        self._busy = True
        try:
            st = self._read_status()
            # Fill TXB2 first: with equal TXP the chip sends the highest
            # buffer number first, so frames queued together go out in the
            # order they were queued.
            if not st & _ST_TXREQ2:
                buf = 2
            elif not st & _ST_TXREQ1:
                buf = 1
            elif not st & _ST_TXREQ0:
                buf = 0
            else:
                return False
            t = self._txb
            t[0] = _I_LOAD_TXB0 + 2 * buf
            if ext:
                sid = can_id >> 18
                t[1] = sid >> 3
                t[2] = ((sid & 7) << 5) | _EXIDE | ((can_id >> 16) & 3)
                t[3] = (can_id >> 8) & 0xFF
                t[4] = can_id & 0xFF
            else:
                t[1] = can_id >> 3
                t[2] = (can_id & 7) << 5
                t[3] = 0
                t[4] = 0
            t[5] = n
            for i in range(n):
                t[6 + i] = data[i]
            self._begin()
            self._spi.write(self._txv[n])
            self._end()
            self._command(_I_RTS | (1 << buf))
        finally:
            self._release()
        self.tx_frames += 1
        return True

    # ------------------------------------------------------------ RX

    def _read_rx(self, instr, frame):
        # One READ RX BUFFER transaction; raising CS clears the RXnIF flag.
        o = self._one
        o[0] = instr
        r = self._rxb
        self._begin()
        self._spi.write(o)
        self._spi.readinto(r, 0)
        self._end()
        sidl = r[1]
        sid = (r[0] << 3) | (sidl >> 5)
        dlc_reg = r[4]
        if sidl & _EXIDE:
            frame.id = (sid << 18) | ((sidl & 3) << 16) | (r[2] << 8) | r[3]
            frame.ext = True
            frame.rtr = bool(dlc_reg & _RTR)
        else:
            frame.id = sid
            frame.ext = False
            frame.rtr = bool(sidl & _SRR)
        n = dlc_reg & 0x0F
        if n > 8:
            n = 8  # DLC 9..15 still means 8 data bytes
        frame.dlc = n
        d = frame.data
        for i in range(n):
            d[i] = r[5 + i]

    def _hw_recv(self, frame):
        """One frame from the chip into frame, or False. Needs _busy set."""
        intp = self._int
        if intp is not None and intp.value():
            return False  # INT high: no RX flag, no error flag
        c = self._cmd2
        c[0] = _I_READ
        c[1] = _CANINTF
        self._begin()
        self._spi.write(c)
        self._spi.readinto(self._one, 0)
        self._end()
        intf = self._one[0]
        if intf & (_ERRIF | _MERRF):
            self._service_errors(intf)
        # RXB0 first: with rollover it holds the older frame.
        if intf & _RX0IF:
            self._read_rx(_I_READ_RXB0, frame)
            return True
        if intf & _RX1IF:
            self._read_rx(_I_READ_RXB1, frame)
            return True
        return False

    def recv_into(self, frame):
        if self._ring_len:
            return self._ring_pop(frame)
        self._busy = True
        try:
            for _ in range(_RX_SPINS):
                if not self._hw_recv(frame):
                    return False
                if self._accepts(frame):
                    self.rx_frames += 1
                    return True
            return False
        finally:
            self._release()

    # ------------------------------------------------------------ ring / IRQ

    def _ring_pop(self, frame):
        # Only the main code pops; drain() only appends. A drain scheduled
        # in the middle of this pop is deferred by _busy.
        self._busy = True
        try:
            src = self._ring[self._ring_head]
            frame.id = src.id
            frame.ext = src.ext
            frame.rtr = src.rtr
            n = src.dlc
            frame.dlc = n
            d = frame.data
            s = src.data
            for i in range(n):
                d[i] = s[i]
            self._ring_head = (self._ring_head + 1) % len(self._ring)
            self._ring_len -= 1
        finally:
            self._release()
        self.rx_frames += 1
        return True

    def drain(self):
        """Move every frame waiting in the chip into the software ring;
        returns how many. Safe to call from a scheduled callback (see
        irq_handler) or from a fast task."""
        if self._busy:
            self._drain_pending = True
            return 0
        self._busy = True
        moved = 0
        try:
            ring = self._ring
            size = len(ring)
            for _ in range(size + 2):
                if self._ring_len >= size:
                    self.ring_overflows += 1
                    break
                slot = ring[(self._ring_head + self._ring_len) % size]
                if not self._hw_recv(slot):
                    break
                if self._accepts(slot):
                    self._ring_len += 1
                    moved += 1
        finally:
            self._release()
        return moved

    def _scheduled_drain(self, _arg):
        self.drain()

    def irq_handler(self, _pin):
        """For int_pin.irq(trigger=Pin.IRQ_FALLING, handler=bus.irq_handler):
        runs the drain as a scheduled (soft) callback, where SPI is allowed."""
        try:
            micropython.schedule(self._drain_cb, 0)
        except RuntimeError:
            pass  # schedule queue full: the frames wait in the chip

    def _release(self):
        self._busy = False
        if self._drain_pending:
            self._drain_pending = False
            self.drain()
