# CHAdeMO (incl. V2H discharge) on CAN, charger side: the codec for the
# car's and the charger's frames, and the session state machine that the
# controller polls. The bus is injected (v2g.can: MCP2515, machine.CAN or
# SLCAN), so the unix port runs this very code against a replayed car.
#
# Layouts: ../shared/reference/chademo/CHADEMO.md, cross-checked there
# across furdog/chademo (chademo_se.h), osexpert/ccs32clara-chademo,
# rand12345/chademo-rs, Battery-Emulator and chademo_research; 500 kbit/s,
# standard IDs, 8-byte frames, 100 ms cycle, little-endian multi-byte fields.
#
# Where the sources disagree, and what this module does:
# - 0x102 byte 4 fault bits: chademo-rs's X102Faults::from() maps bit 4 to
#   overvoltage and bit 0 to voltage deviation, against its own doc comments
#   (102.4.0 = overvoltage) and against furdog, ccs32clara and
#   Battery-Emulator. We follow the four sources and the doc text: bit 0 =
#   overvoltage. For protection it makes no difference (any fault bit stops
#   power); it only names the fault reported upwards.
# - 0x200 bytes 6/7 (minimum discharge level, maximum charge level): the spec
#   text quoted by chademo-rs says % (V2H guideline >= 1.0) or kWh (older);
#   chademo-rs decodes byte 6 as 0xFF - raw, ccs32clara and Battery-Emulator
#   raw. The Leaf capture sends 0x43/0xB2 = 67/178: 178 % and 67/178 kWh (on
#   a 22.2 kWh pack, 0x101) are impossible, 255-67 = 188 % too; read raw as
#   0.1 kWh they are 6.7/17.8 kWh = 30 %/80 % of the pack, a typical V2H
#   window. So: raw, unit 0.1 kWh, converted to % of the 0x101 capacity, and
#   used only to restrict (no discharge at or below the floor, no charge at
#   or above the ceiling), never to permit. The raw bytes are kept.
# - 0x102 timeout: furdog has none yet ("TODO check timeouts");
#   ccs32clara stops the charging loop when no 0x102 came for 1 s
#   (LAST_REQUEST_CURRENT_TIMEOUT_CYCLES = 10 cycles of 100 ms). We use
#   1000 ms in every state of a session (handshake to discharging): the
#   session goes to "fault" ("can_timeout") and must_stop is True at once.
# - When the SoC is valid: ccs32clara reads SoC (and the 0x100 "charged rate
#   reference constant") only after the car closed switch (k), an analogue
#   signal we do not have; in the capture both are junk before that
#   (SoC 3 %, then 1 %, constant 0xF0). On CAN the equivalent moment is the
#   car setting 102.5.0 "charging/discharging enabled", which the spec text
#   says it does once it has sent all data needed before charging. So SoC is
#   None until the car has set 102.5.0 once in this session.
# - 0x109 byte 4 (discharge compatible) is only sent as 1 together with
#   0x208/0x209 frames: ccs32clara warns that a car fails otherwise.
#
# Session states (charger side), and how they change:
#   idle         no car. -> handshake on the first 0x102
#   handshake    car frames arrive; we send 0x108/0x109 (stop control set)
#                -> ready when the car has set "enabled" (102.5.0) and closed
#                its contactors (102.5.3 = 0)
#   ready        contactors closed; no power (request 0 or not allowed yet)
#   charging     ready + the car asked for current + the controller asks for
#                ev_w > 0
#   discharging  ready + the car allows discharge current + ev_w < 0
#   stopping     the car asked to stop (102.5.4, 102.5.0 cleared, shift out
#                of park) or stop() was called: current to 0, wait for the
#                car to open its contactors (at most 10 s, as ccs32clara)
#   stopped      session over; -> idle when the car has been silent for 3 s,
#                or on reset()
#   fault        a car fault bit (102.4.x, 102.5.2), battery incompatible
#                (target voltage above ours), 0x102 timeout, bus off;
#                latched until the car is gone or reset()
# must_stop is True in every state but ready/charging/discharging: the
# controller then commands 0 W within the same control period.
#
# Limits for the guard. The car speaks amps, the controller watts:
#   charge_limit_w    = min(car's current request, max_current_a) * V
#   discharge_limit_w = min(car's max discharge current, max_discharge_current_a) * V
# with V the measured DC voltage (set_measured) while fresh, else the lowest
# voltage the car declared (0x200 min discharge voltage, else 0x100 min
# battery voltage), else its target voltage: an estimate that never
# overstates what the car's current limits allow. Both are 0 outside the
# charging loop. 0x108's offered current is our maximum throughout, except
# for a car that announced dynamic control (0x110 b0): it then follows the
# controller's request, so the car asks for what we mean to deliver.
#
# Timing is physical: pass now_ms from the real ticks clock (v2g.clock.Clock),
# never a warped one, and call poll()/cycle() at least every 50 ms (the car
# sends a frame every ~10 ms; frames go out every 100 ms).
from micropython import const

from v2g.can import STATE_BUS_OFF, Frame

# -- IDs
_ID_EV_LIMITS = const(0x100)
_ID_EV_TIMES = const(0x101)
_ID_EV_STATUS = const(0x102)
_ID_EV_EXT = const(0x110)
_ID_EV_DISCHARGE = const(0x200)
_ID_EV_DISCHARGE_EST = const(0x201)
_ID_CH_LIMITS = const(0x108)
_ID_CH_STATUS = const(0x109)
_ID_CH_EXT = const(0x118)
_ID_CH_DISCHARGE = const(0x208)
_ID_CH_DISCHARGE_EST = const(0x209)
EV_IDS = (0x100, 0x101, 0x102, 0x110, 0x200, 0x201)

# -- 0x102 byte 4: faults (bit 0 = overvoltage: see the module comment)
_FAULT_OVERVOLTAGE = const(0x01)
_FAULT_UNDERVOLTAGE = const(0x02)
_FAULT_CURRENT_DEVIATION = const(0x04)
_FAULT_HIGH_TEMP = const(0x08)
_FAULT_VOLTAGE_DEVIATION = const(0x10)
_FAULT_CODES = ("ev_overvoltage", "ev_undervoltage", "ev_current_deviation",
                "ev_high_temp", "ev_voltage_deviation")

# -- 0x102 byte 5: status
_ST_ENABLED = const(0x01)  # charging/discharging enabled
_ST_NOT_PARKED = const(0x02)
_ST_SYSTEM_FAULT = const(0x04)
_ST_CONTACTOR_OPEN = const(0x08)  # 1 = open, or welding detection done
_ST_STOP_REQUEST = const(0x10)  # normal stop request before charging
_ST_DISCHARGE_COMPATIBLE = const(0x80)  # V2H

# -- 0x109 byte 5: charger status
_CH_CHARGING = const(0x01)
_CH_MALFUNCTION = const(0x02)
_CH_LOCKED = const(0x04)  # connector locked / energizing
_CH_INCOMPATIBLE = const(0x08)
_CH_SYSTEM_MALFUNCTION = const(0x10)
_CH_STOP_CONTROL = const(0x20)

# -- session states
IDLE = "idle"
HANDSHAKE = "handshake"
READY = "ready"
CHARGING = "charging"
DISCHARGING = "discharging"
STOPPING = "stopping"
STOPPED = "stopped"
FAULT = "fault"
STATES = (IDLE, HANDSHAKE, READY, CHARGING, DISCHARGING, STOPPING, STOPPED, FAULT)

_CYCLE_MS = const(100)
_TIMEOUT_102_MS = const(1000)  # ccs32clara: 1 s without 0x102 ends the loop
_AWAY_MS = const(3000)  # car silent this long: unplugged, session over
_STOP_WAIT_MS = const(10000)  # ccs32clara: at most 10 s for low current / contactors
_LOW_CURRENT_A = const(5)  # spec: charging flag drops at <= 5 A
_MEAS_FRESH_MS = const(1000)
_HEALTH_MS = const(1000)  # bus state check / recovery attempt period
_MAX_RX_PER_POLL = const(64)
_PROTOCOL = const(2)  # CHAdeMO 1.0.x, as the capture's charger
_V2H_SEQUENCE = const(2)  # 0x209 byte 0, as in the capture and ccs32clara

# pending-frame bits, in sending order
_TX_108 = const(1)
_TX_109 = const(2)
_TX_118 = const(4)
_TX_208 = const(8)
_TX_209 = const(16)


# ---------------------------------------------------------------- codec


class EvData:
    """The car's latest values, decoded in place (one instance, reused)."""

    def __init__(self):
        self.clear()

    def clear(self):
        self.seen = 0  # bit per ID: 1 0x100, 2 0x101, 4 0x102, 8 0x110, 16 0x200, 32 0x201
        # 0x100
        self.min_charge_current_a = 0
        self.max_charge_current_a = 0  # byte 1, some cars only
        self.min_battery_voltage_v = 0
        self.max_battery_voltage_v = 0
        self.charged_rate_ref = 0  # 0x64 = SoC byte is in %
        # 0x101
        self.max_charge_time_s = 0
        self.est_charge_time_min = 0
        self.battery_capacity_wh = 0
        # 0x102
        self.protocol = 0
        self.target_voltage_v = 0
        self.charge_current_req_a = 0
        self.faults = 0
        self.status = 0
        self.soc_raw = 0
        # 0x110
        self.ext_flags = 0  # b0 dynamic control, b1 high current, b2 high voltage
        # 0x200
        self.max_discharge_current_a = 0  # 0xFF - raw
        self.min_discharge_voltage_v = 0
        self.min_discharge_level_raw = 0  # byte 6, raw (0.1 kWh, see above)
        self.max_charge_level_raw = 0  # byte 7, raw
        # 0x201
        self.v2h_sequence = 0
        self.discharge_time_min = 0
        self.available_energy_wh = 0

    def level_cpct(self, raw):
        """A 0x200 byte 6/7 level in 0.01 % of the pack, or None (unused,
        capacity unknown, or not a plausible share of the pack)."""
        cap = self.battery_capacity_wh
        if not raw or cap <= 0:
            return None
        cp = raw * 1000000 // cap  # raw * 100 Wh * 10000 / cap; < 2**29 for raw < 256
        return cp if cp <= 10000 else None


def _u16(d, i):
    return d[i] | (d[i + 1] << 8)


def decode(can_id, data, dlc, ev):
    """Decode one car frame into ev. -> 1 decoded, 0 not a car ID,
    -1 a car ID with the wrong length (nothing changed)."""
    if can_id == 0x102:
        bit = 4
    elif can_id == 0x100:
        bit = 1
    elif can_id == 0x101:
        bit = 2
    elif can_id == 0x200:
        bit = 16
    elif can_id == 0x110:
        bit = 8
    elif can_id == 0x201:
        bit = 32
    else:
        return 0
    if dlc != 8:
        return -1
    d = data
    if bit == 4:
        ev.protocol = d[0]
        ev.target_voltage_v = _u16(d, 1)
        ev.charge_current_req_a = d[3]
        ev.faults = d[4]
        ev.status = d[5]
        ev.soc_raw = d[6]
    elif bit == 1:
        ev.min_charge_current_a = d[0]
        ev.max_charge_current_a = d[1]
        ev.min_battery_voltage_v = _u16(d, 2)
        ev.max_battery_voltage_v = _u16(d, 4)
        ev.charged_rate_ref = d[6]
    elif bit == 2:
        # byte 1 in 10 s units, 0xFF = "see byte 2" (minutes)
        ev.max_charge_time_s = d[2] * 60 if d[1] == 0xFF else d[1] * 10
        ev.est_charge_time_min = d[3]
        ev.battery_capacity_wh = _u16(d, 5) * 100
    elif bit == 16:
        ev.max_discharge_current_a = 0xFF - d[0]  # inverted: 0xFF = 0 A
        ev.min_discharge_voltage_v = _u16(d, 4)
        ev.min_discharge_level_raw = d[6]
        ev.max_charge_level_raw = d[7]
    elif bit == 8:
        ev.ext_flags = d[0]
    else:
        ev.v2h_sequence = d[0]
        ev.discharge_time_min = _u16(d, 1)
        ev.available_energy_wh = _u16(d, 3) * 100
    ev.seen |= bit
    return 1


def _clamp8(v):
    return 0 if v < 0 else 0xFF if v > 0xFF else v


def _put16(b, i, v):
    v = 0 if v < 0 else 0xFFFF if v > 0xFFFF else v
    b[i] = v & 0xFF
    b[i + 1] = v >> 8


def encode_108(b, weld_detect, avail_voltage_v, avail_current_a, threshold_voltage_v):
    b[0] = 1 if weld_detect else 0
    _put16(b, 1, avail_voltage_v)
    b[3] = _clamp8(avail_current_a)
    _put16(b, 4, threshold_voltage_v)
    b[6] = 0
    b[7] = 0


def encode_109(b, protocol, present_voltage_v, present_current_a, discharge_compatible,
               status, remaining_10s, remaining_min):
    b[0] = protocol
    _put16(b, 1, present_voltage_v)
    b[3] = _clamp8(present_current_a)
    b[4] = 1 if discharge_compatible else 0
    b[5] = status
    b[6] = _clamp8(remaining_10s)
    b[7] = _clamp8(remaining_min)


def encode_118(b, ext_flags):
    b[0] = ext_flags
    for i in range(1, 8):
        b[i] = 0


def encode_208(b, present_discharge_current_a, avail_input_voltage_v, avail_input_current_a,
               lower_threshold_voltage_v):
    # currents inverted on the wire: 0xFF - A
    b[0] = 0xFF - _clamp8(present_discharge_current_a)
    _put16(b, 1, avail_input_voltage_v)
    b[3] = 0xFF - _clamp8(avail_input_current_a)
    b[4] = 0
    b[5] = 0
    _put16(b, 6, lower_threshold_voltage_v)


def encode_209(b, sequence, remaining_discharge_min):
    b[0] = sequence
    _put16(b, 1, remaining_discharge_min)
    for i in range(3, 8):
        b[i] = 0


# ---------------------------------------------------------------- session


class ChademoSession:
    """Charger side of one CHAdeMO connector.

    bus        a v2g.can bus (send / recv_into / state / recover)
    clock      v2g.clock.Clock-like (ticks_diff, ticks_add); real time
    max_voltage_v, max_current_a
               what the power stage can deliver (0x108)
    max_discharge_current_a
               what it can take back (0x208); 0 = no V2H (default: max_current_a)
    min_voltage_v
               lowest DC voltage the power stage works at (0x208 lower threshold)
    """

    def __init__(self, bus, clock, max_voltage_v, max_current_a, max_discharge_current_a=None,
                 min_voltage_v=0, weld_detect=True, timeout_ms=_TIMEOUT_102_MS):
        self.bus = bus
        self.clock = clock
        self.max_voltage_v = max_voltage_v
        self.max_current_a = max_current_a
        self.max_discharge_current_a = (max_current_a if max_discharge_current_a is None
                                        else max_discharge_current_a)
        self.v2h = self.max_discharge_current_a > 0
        self.min_voltage_v = min_voltage_v
        self.weld_detect = weld_detect
        self.timeout_ms = timeout_ms
        self.ev = EvData()
        self._frame = Frame()
        self._b108 = bytearray(8)
        self._b109 = bytearray(8)
        self._b118 = bytearray(8)
        self._b208 = bytearray(8)
        self._b209 = bytearray(8)
        # (pending flag, ID, buffer) in sending order, built once
        self._tx_order = ((_TX_108, _ID_CH_LIMITS, self._b108), (_TX_109, _ID_CH_STATUS, self._b109),
                          (_TX_118, _ID_CH_EXT, self._b118), (_TX_208, _ID_CH_DISCHARGE, self._b208),
                          (_TX_209, _ID_CH_DISCHARGE_EST, self._b209))
        # counters (diagnostics)
        self.rx_frames = 0  # car frames decoded
        self.bad_frames = 0  # car IDs with a wrong length
        self.ignored_frames = 0  # other IDs, extended or remote frames
        self.tx_frames = 0
        self.tx_late = 0  # cycles whose frames had not all gone out by the next one
        self.sessions = 0
        self.recoveries = 0  # bus.recover() calls
        self._recover_tries = 0
        self._recover_wait = 0  # health checks to skip before the next recover()
        self._health_ms = None
        self._meas_ms = None
        self.measured_voltage_v = 0
        self.measured_current_a = 0  # + into the car, - out of it
        self._reset()
        try:
            bus.set_filters(EV_IDS)
        except (OSError, ValueError):
            pass  # the session filters IDs itself anyway

    # ------------------------------------------------------------ state

    def _reset(self):
        self.ev.clear()
        self.state = IDLE
        self.fault = None
        self.stop_reason = None
        self.stop_requested = False  # the car asked to stop
        self.must_stop = True
        self.soc_cpct = None
        self.soc_res_cpct = 100
        self.soc_age_ms = None
        self.discharge_ok = False
        self.charge_limit_w = 0
        self.discharge_limit_w = 0
        self._t102_ms = None  # last 0x102
        self._t_state_ms = None  # entry into the current state
        self._t_loop_ms = None  # start of the charging loop
        self._enabled_seen = False
        self._loop = False  # the car has asked for current: charging loop
        self._stop_cmd = False
        self._req_w = 0
        self._pending = 0
        self._next_tx_ms = None

    def reset(self):
        """Forget the session (clears a latched fault). A car still talking
        starts a new handshake at the next 0x102."""
        self._reset()

    def stop(self):
        """Charger-side stop (departure reached, owner, controller fault):
        current to zero and let the car open its contactors. Without a car
        (idle) there is nothing to stop, and the next car is not refused;
        after a stop only a new plug-in or reset() starts power again."""
        if self.state != IDLE:
            self._stop_cmd = True

    def set_measured(self, voltage_v, current_a, now_ms):
        """The power stage's DC measurements (current + into the car). Sent
        to the car as present values and used to turn A into W."""
        self.measured_voltage_v = voltage_v
        self.measured_current_a = current_a
        self._meas_ms = now_ms

    def _enter(self, state, now_ms):
        self.state = state
        self._t_state_ms = now_ms

    def _fail(self, code, now_ms):
        self.fault = code
        self._enter(FAULT, now_ms)

    def _stop_because(self, reason, now_ms, by_car):
        self.stop_reason = reason
        self.stop_requested = by_car
        self._enter(STOPPING, now_ms)

    def _age(self, now_ms, then_ms):
        return self.clock.ticks_diff(now_ms, then_ms)

    # ------------------------------------------------------------ rules

    def _evaluate(self, now_ms):
        ev = self.ev
        st = self.state
        t102 = self._t102_ms
        if st == IDLE:
            if t102 is None:
                self._outputs(now_ms)
                return
            self.sessions += 1
            self._enter(HANDSHAKE, now_ms)
            st = HANDSHAKE
        age = self._age(now_ms, t102)
        self.soc_age_ms = age
        if st == STOPPED or st == FAULT:
            if age > _AWAY_MS:
                self._reset()  # car gone: the next 0x102 is a new session
                self._outputs(now_ms)
                return
        elif age > self.timeout_ms:
            if st == STOPPING:
                self._enter(STOPPED, now_ms)  # the car went quiet as it stopped
            else:
                self._fail("can_timeout", now_ms)
        else:
            self._rules(ev, st, now_ms)
        self._outputs(now_ms)

    def _rules(self, ev, st, now_ms):
        status = ev.status
        if st == STOPPING:
            cur = self._present_current_a(now_ms)
            waited = self._age(now_ms, self._t_state_ms)
            if (status & _ST_CONTACTOR_OPEN and cur <= _LOW_CURRENT_A) or waited > _STOP_WAIT_MS:
                self._enter(STOPPED, now_ms)
            return
        # handshake, ready, charging, discharging
        if ev.faults:
            f = ev.faults
            i = 0
            while not f & 1:
                f >>= 1
                i += 1
            self._fail(_FAULT_CODES[i] if i < 5 else "ev_fault", now_ms)
            return
        if status & _ST_SYSTEM_FAULT:
            self._fail("ev_system_fault", now_ms)
            return
        if ev.target_voltage_v > self.max_voltage_v:
            self._fail("battery_incompatible", now_ms)
            return
        if status & _ST_ENABLED:
            self._enabled_seen = True
        if status & _ST_STOP_REQUEST:
            self._stop_because("ev_stop_request", now_ms, True)
            return
        if status & _ST_NOT_PARKED:
            self._stop_because("ev_not_parked", now_ms, True)
            return
        if self._enabled_seen and not status & _ST_ENABLED:
            self._stop_because("ev_disabled", now_ms, True)
            return
        if self._stop_cmd:
            self._stop_because("charger_stop", now_ms, False)
            return
        if st == HANDSHAKE:
            if self._enabled_seen and not status & _ST_CONTACTOR_OPEN:
                self._enter(READY, now_ms)
            return
        if not self._loop and ev.charge_current_req_a > 0:
            self._loop = True  # the car asks for current: the charging loop
            self._t_loop_ms = now_ms
        req = self._req_w
        if req > 0 and self._loop:
            want = CHARGING
        elif req < 0 and self._loop and self._discharge_allowed():
            want = DISCHARGING
        else:
            want = READY
        if want != st:
            self._enter(want, now_ms)

    def _discharge_allowed(self):
        ev = self.ev
        if not self.v2h or not ev.status & _ST_DISCHARGE_COMPATIBLE:
            return False
        if ev.max_discharge_current_a <= 0:
            return False
        floor = ev.level_cpct(ev.min_discharge_level_raw)
        soc = self.soc_cpct
        return floor is None or soc is None or soc > floor

    def _soc(self):
        ev = self.ev
        if not self._enabled_seen:
            return None
        ref = ev.charged_rate_ref
        if 0 < ref < 0xFF:
            self.soc_res_cpct = 10000 // ref
            cp = ev.soc_raw * 10000 // ref
        else:
            self.soc_res_cpct = 100
            cp = ev.soc_raw * 100
        return cp if cp <= 10000 else None

    def _basis_v(self, now_ms):
        # Volts to turn the car's amps into watts: the measured DC voltage if
        # fresh; else the lowest voltage the car declared (so the watts never
        # overstate what its current limit allows), else its target voltage.
        if self._meas_ms is not None and self._age(now_ms, self._meas_ms) <= _MEAS_FRESH_MS:
            if self.measured_voltage_v > 0:
                return self.measured_voltage_v
        ev = self.ev
        if ev.min_discharge_voltage_v > 0:
            return ev.min_discharge_voltage_v
        if ev.min_battery_voltage_v > 0:
            return ev.min_battery_voltage_v
        return ev.target_voltage_v

    def _present_current_a(self, now_ms):
        # magnitude of the current flowing now: measured, else what we command
        if self._meas_ms is not None and self._age(now_ms, self._meas_ms) <= _MEAS_FRESH_MS:
            c = self.measured_current_a
            return -c if c < 0 else c
        if self.state == CHARGING:
            v = self._basis_v(now_ms)
            return min(self._req_w, self.charge_limit_w) // v if v > 0 else 0
        if self.state == DISCHARGING:
            v = self._basis_v(now_ms)
            return min(-self._req_w, self.discharge_limit_w) // v if v > 0 else 0
        return 0

    def _outputs(self, now_ms):
        st = self.state
        live = st == READY or st == CHARGING or st == DISCHARGING
        self.must_stop = not live
        if st == IDLE:
            self.soc_cpct = None
            self.soc_age_ms = None
        else:
            soc = self._soc()
            if soc is not None:
                self.soc_cpct = soc
        ev = self.ev
        if not live or not self._loop:
            self.discharge_ok = False
            self.charge_limit_w = 0
            self.discharge_limit_w = 0
            return
        v = self._basis_v(now_ms)
        ceiling = ev.level_cpct(ev.max_charge_level_raw)
        soc = self.soc_cpct
        if ceiling is not None and soc is not None and soc >= ceiling:
            self.charge_limit_w = 0
        else:
            self.charge_limit_w = min(ev.charge_current_req_a, self.max_current_a) * v
        self.discharge_ok = self._discharge_allowed()
        if self.discharge_ok:
            self.discharge_limit_w = min(ev.max_discharge_current_a, self.max_discharge_current_a) * v
        else:
            self.discharge_limit_w = 0

    # ------------------------------------------------------------ per tick

    def poll(self, now_ms):
        """Drain received frames (non-blocking) and apply the rules. After
        this returns, must_stop reflects every frame that had arrived."""
        bus = self.bus
        f = self._frame
        ev = self.ev
        n = 0
        while n < _MAX_RX_PER_POLL and bus.recv_into(f):
            n += 1
            if f.ext or f.rtr:
                self.ignored_frames += 1
                continue
            r = decode(f.id, f.data, f.dlc, ev)
            if r > 0:
                self.rx_frames += 1
                if f.id == _ID_EV_STATUS:
                    self._t102_ms = now_ms
                    self._evaluate(now_ms)  # a stop or fault acts at once
            elif r == 0:
                self.ignored_frames += 1
            else:
                self.bad_frames += 1
        self._health(now_ms)
        self._evaluate(now_ms)
        self._send_pending()
        return n

    def _health(self, now_ms):
        # Once a second: is the bus usable? Bus off (or an SLCAN link lost)
        # ends a session at once. Recovery is tried after 1 s, then 2, 4, up
        # to 8 s apart: reopening a TCP link to a dead gateway can cost its
        # connect timeout, which a control loop should not pay every second.
        if self._health_ms is not None and self._age(now_ms, self._health_ms) < _HEALTH_MS:
            return
        self._health_ms = now_ms
        if self.bus.state() != STATE_BUS_OFF:
            self._recover_tries = 0
            self._recover_wait = 0
            return
        st = self.state
        if st != IDLE and st != STOPPED and st != FAULT:
            self._fail("can_bus_off", now_ms)
        if self._recover_wait > 0:
            self._recover_wait -= 1
            return
        self.bus.recover()
        self.recoveries += 1
        # checks to skip before the next try: 0, 1, 3, 7, 7, ... = 1, 2, 4, 8 s apart
        self._recover_wait = (1 << min(self._recover_tries, 3)) - 1
        self._recover_tries += 1

    def cycle(self, now_ms, ev_w_request):
        """Send the charger's frames when the 100 ms cycle is due.
        ev_w_request: what the controller wants before the vehicle limits
        (W, + into the car); it sets the direction and, with a car that
        supports dynamic control, the current offered in 0x108."""
        self._req_w = ev_w_request
        self._evaluate(now_ms)
        if self.state == IDLE:
            self._pending = 0
            self._next_tx_ms = None
            return
        due = self._next_tx_ms
        if due is None or self._age(now_ms, due) >= 0:
            if self._pending:
                self.tx_late += 1
            self._encode(now_ms)
            # The next deadline counts from the last one, so the period holds
            # on average whatever the caller's jitter; after a stall of a
            # whole cycle it restarts from now instead of sending a burst.
            if due is None or self._age(now_ms, due) >= _CYCLE_MS:
                self._next_tx_ms = self.clock.ticks_add(now_ms, _CYCLE_MS)
            else:
                self._next_tx_ms = self.clock.ticks_add(due, _CYCLE_MS)
        self._send_pending()

    def _send_pending(self):
        # In order; a full TX buffer keeps the rest for the next call.
        p = self._pending
        bus = self.bus
        for flag, can_id, buf in self._tx_order:
            if p & flag:
                if not bus.send(can_id, buf):
                    break
                p &= ~flag
                self.tx_frames += 1
        self._pending = p

    def _status_byte(self, now_ms):
        st = self.state
        if st == FAULT:
            bits = _CH_STOP_CONTROL
            if self.fault == "battery_incompatible":
                bits |= _CH_INCOMPATIBLE
            else:
                bits |= _CH_SYSTEM_MALFUNCTION
            return bits
        if st == STOPPED:
            return _CH_STOP_CONTROL
        if st == STOPPING:
            bits = _CH_STOP_CONTROL | _CH_LOCKED
            if self._present_current_a(now_ms) > _LOW_CURRENT_A:
                bits |= _CH_CHARGING
            return bits
        if self._loop:
            return _CH_CHARGING | _CH_LOCKED  # charging loop: stop control cleared
        if self._enabled_seen:
            return _CH_STOP_CONTROL | _CH_LOCKED
        return _CH_STOP_CONTROL

    def _encode(self, now_ms):
        ev = self.ev
        st = self.state
        # 0x108: offered current. Only a car that announced dynamic control
        # (0x110 b0) may see it change; others get our maximum throughout.
        avail_a = self.max_current_a
        if ev.ext_flags & 1:
            v = self._basis_v(now_ms)
            req = self._req_w
            avail_a = min(self.max_current_a, (req + v - 1) // v) if req > 0 and v > 0 else 0
        threshold = self.max_voltage_v
        if 0 < ev.max_battery_voltage_v < threshold:
            threshold = ev.max_battery_voltage_v
        encode_108(self._b108, self.weld_detect, self.max_voltage_v, avail_a, threshold)
        # 0x109
        fresh = self._meas_ms is not None and self._age(now_ms, self._meas_ms) <= _MEAS_FRESH_MS
        volts = self.measured_voltage_v if fresh else 0
        charge_a = self._present_current_a(now_ms) if st == CHARGING or (
            fresh and self.measured_current_a > 0) else 0
        remaining_min = ev.max_charge_time_s // 60
        if self._loop and self._t_loop_ms is not None:
            remaining_min -= self._age(now_ms, self._t_loop_ms) // 60000
        encode_109(self._b109, _PROTOCOL, volts, charge_a, self.v2h, self._status_byte(now_ms),
                   0xFF, remaining_min)
        p = _TX_108 | _TX_109
        if ev.seen & 8:
            # mirror only what we support: dynamic control (0x108 follows
            # the controller's request); not high current/voltage control
            encode_118(self._b118, ev.ext_flags & 1)
            p |= _TX_118
        if self.v2h:
            dis_a = self._present_current_a(now_ms) if st == DISCHARGING or (
                fresh and self.measured_current_a < 0) else 0
            if ev.seen & 16:
                avail_in_a = self.max_discharge_current_a
                lower_v = max(self.min_voltage_v, ev.min_discharge_voltage_v)
            else:
                avail_in_a = 0  # before the car's 0x200, as the capture's charger
                lower_v = self.min_voltage_v
            encode_208(self._b208, dis_a, self.max_voltage_v, avail_in_a, lower_v)
            encode_209(self._b209, _V2H_SEQUENCE, 0)
            p |= _TX_208 | _TX_209
        self._pending = p

    def snapshot(self):
        """Diagnostics (allocates: technician and events, not the hot path)."""
        ev = self.ev
        return {
            "state": self.state, "fault": self.fault, "stop_reason": self.stop_reason,
            "soc_cpct": self.soc_cpct, "soc_age_ms": self.soc_age_ms,
            "charge_limit_w": self.charge_limit_w, "discharge_limit_w": self.discharge_limit_w,
            "discharge_ok": self.discharge_ok, "must_stop": self.must_stop,
            "target_voltage_v": ev.target_voltage_v, "charge_current_req_a": ev.charge_current_req_a,
            "max_discharge_current_a": ev.max_discharge_current_a, "ev_status": ev.status,
            "ev_faults": ev.faults, "rx_frames": self.rx_frames, "bad_frames": self.bad_frames,
            "ignored_frames": self.ignored_frames, "tx_frames": self.tx_frames,
            "tx_late": self.tx_late,
        }
