# CHAdeMO (incl. V2H discharge) on CAN, charger side: the codec for the
# car's and the charger's frames, and the session (v2g.vehicle.VehicleSession)
# that the control loop ticks. The bus is injected (v2g.can: MCP2515,
# machine.CAN or SLCAN), so the unix port runs this very code against a
# replayed car.
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
#   Battery-Emulator. We follow the four sources and the doc text: bit 0
#   overvoltage, 1 undervoltage, 2 current deviation, 3 high temperature,
#   4 voltage deviation. For protection it makes no difference (any fault
#   bit stops power); it only names the fault reported upwards.
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
# One tick (tick(), once per control tick, period <= 100 ms): drain the
# received frames (at most 64); check the bus once a second; one call of
# _step(), the only place the state changes, which makes at most one
# transition; the outputs (must_stop, limits, SoC); the frames due on the
# 100 ms cycle. A stop request or fault bit seen in any 0x102 of the drain
# is latched while draining, so it acts in that tick even when a later
# frame of the same drain no longer carries it. Every transition goes
# through _enter(), which runs the new state's entry action and logs
# "old -> new" (event "chademo", with why).
#
# Session states (charger side), and how _step() changes them (the first
# rule that holds wins):
#   idle         no car. -> handshake on the first 0x102 (a session begins),
#                or straight to fault/stopping when that 0x102 already
#                carries a fault or a stop request
#   handshake    car frames arrive; we send 0x108/0x109 (stop control set)
#                -> ready when the car has set "enabled" (102.5.0) and closed
#                its contactors (102.5.3 = 0), unless stop() holds it here
#   ready        contactors closed; no power (request 0 or not allowed yet)
#   charging     ready + the car asked for current + the controller asks for
#                ev_w > 0
#   discharging  ready + the car allows discharge current + ev_w < 0
#   stopping     the car asked to stop (102.5.4, 102.5.0 cleared, shift out
#                of park), or stop(reason) was called in ready, charging or
#                discharging. 0x108 and 0x208 offer 0 A; 0x109's present
#                current goes to 0 (measured, or an estimate that falls by
#                at most _EST_STEP_A per cycle); its "charging" flag clears
#                once that is <= 5 A, its "energizing" (connector lock) flag
#                when we leave for stopped: -> stopped when the car has
#                opened its contactors at <= 5 A, after 10 s (ccs32clara),
#                or when the car went quiet
#   stopped      session over; -> idle when the car has been silent for 3 s,
#                or at the tick after reset()
#   fault        a car fault bit (102.4.x, 102.5.2), battery incompatible
#                (target voltage above ours), 0x102 timeout, bus off;
#                latched until the car is gone or reset()
# In handshake to discharging: bus off, the 0x102 timeout, the car's faults,
# then its stop requests, then the charger's stop wish come before the
# state's own rule.
# must_stop is True in every state but ready/charging/discharging: the
# controller then commands 0 W within the same control period.
#
# The charger ends a session with stop(reason) ("departure", "owner",
# "controller_fault", "shutdown"): the wish holds until start(), so a new
# car (or a handshake not yet in ready) waits in handshake with stop control
# set; start() lets it go on. A session that already ended stays ended
# until the car starts a new one. Without a car stop() does nothing.
#
# Present output in 0x109 (and 0x208 for discharge). CHAdeMO has no field in
# which the car reports its measured voltage, so:
#   voltage  the power stage's DC voltage (set_measured dc_v, 714) while
#            fresh (<= 1 s); else the car's 0x102 target voltage as the
#            estimate, while its contactors are closed in ready to stopping
#            (the battery is then on the output); else 0
#   current  the measured DC current (dc_a) while fresh, else the measured
#            power over that voltage (ev_w / V); with no fresh measurement
#            an estimate of what we command, moved by at most _EST_STEP_A per
#            100 ms cycle. + into the car goes in 0x109 byte 3, - out of it
#            in 0x208 byte 0.
#
# Limits for the guard. The car speaks amps, the controller watts:
#   charge_limit_w    = min(car's current request, max_current_a) * V
#   discharge_limit_w = min(car's max discharge current, max_discharge_current_a) * V
# with V the measured DC voltage (set_measured dc_v) while fresh, else the
# lowest voltage the car declared (0x200 min discharge voltage, else 0x100
# min battery voltage), else its target voltage: an estimate that never
# overstates what the car's current limits allow. Both are 0 outside the
# charging loop. 0x108's offered current is our maximum until stopping,
# except for a car that announced dynamic control (0x110 b0): it then
# follows the controller's request, so the car asks for what we mean to
# deliver.
#
# Timing is physical: pass now_ms from the real ticks clock (v2g.clock.Clock),
# never a warped one (the car's timeouts are in real milliseconds).
from micropython import const

from v2g import log
from v2g.can import STATE_BUS_OFF, Frame
from v2g.vehicle import VehicleSession

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

# -- 0x102 byte 4: fault bits 0..4, named in this order (see above)
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
# A tick up to this early still sends the cycle's frames: the control tick
# and the 100 ms cycle have the same period at period_ms = 100, and the
# tick's time is taken after a Modbus read of varying length, so a strict
# deadline would skip every other cycle. The next deadline counts from the
# last one, so the average period stays 100 ms.
_TX_EARLY_MS = const(40)
_TIMEOUT_102_MS = const(1000)  # ccs32clara: 1 s without 0x102 ends the loop
_AWAY_MS = const(3000)  # car silent this long: unplugged, session over
_STOP_WAIT_MS = const(10000)  # ccs32clara: at most 10 s for low current / contactors
_LOW_CURRENT_A = const(5)  # spec: charging flag drops at <= 5 A
# Estimated present current (no fresh measurement): at most 2 A per 100 ms
# cycle either way (20 A/s), so the car never sees a jump the power stage
# would not make; the capture's charger came down 14 -> 9 -> 0 A, faster.
_EST_STEP_A = const(2)
_MEAS_FRESH_MS = const(1000)
_HEALTH_MS = const(1000)  # bus state check / recovery attempt period
_MAX_RX_PER_TICK = const(64)
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
    if can_id == _ID_EV_STATUS:
        bit = 4
    elif can_id == _ID_EV_LIMITS:
        bit = 1
    elif can_id == _ID_EV_TIMES:
        bit = 2
    elif can_id == _ID_EV_DISCHARGE:
        bit = 16
    elif can_id == _ID_EV_EXT:
        bit = 8
    elif can_id == _ID_EV_DISCHARGE_EST:
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


class ChademoSession(VehicleSession):
    """Charger side of one CHAdeMO connector (a v2g.vehicle.VehicleSession).

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
        super().__init__()
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
        self.transitions = 0
        self.last_transition = None  # "old -> new", as logged
        self.last_why = None
        self.recoveries = 0  # bus.recover() calls
        self._recover_tries = 0
        self._recover_wait = 0  # health checks to skip before the next recover()
        self._health_ms = None
        # wishes, acted on by the next tick
        self.stop_wish = None  # the charger's stop reason until start(), or None
        self._reset_wish = False
        # the power stage's measurements (set_measured)
        self._meas_ms = None
        self._meas_w = 0  # + into the car
        self._meas_v = 0  # DC V; 0 = not measured
        self._meas_a = None  # DC A, + into the car; None = not measured
        self._req_w = 0
        self._clear()
        self.state = IDLE
        try:
            bus.set_filters(EV_IDS)
        except (OSError, ValueError):
            pass  # the session filters IDs itself anyway

    # ------------------------------------------------------------ calls

    def stop(self, reason):
        """The charger ends the session (reason: "departure", "owner",
        "controller_fault" or "shutdown"): at the next tick, ready, charging
        and discharging go to stopping; a handshake waits. The wish holds
        until start(). Without a car (idle) there is nothing to stop, and
        the next car is not refused."""
        if self.state != IDLE:
            self.stop_wish = reason

    def start(self):
        """The charger is willing again: a waiting handshake, or the next
        session, may go on. A session that ended stays ended."""
        self.stop_wish = None

    def reset(self):
        """Forget the session at the next tick (clears a latched fault). A
        car still talking starts a new handshake at its next 0x102."""
        self._reset_wish = True

    def set_measured(self, now_ms, ev_w, dc_v=None, dc_a=None):
        """The power stage's measurements: ev_w the power into the car (W,
        - out of it), dc_v / dc_a the DC side (V, A + into the car) or None.
        Sent to the car as present values and used to turn A into W."""
        if ev_w is None:
            return
        self._meas_ms = now_ms
        self._meas_w = int(ev_w)
        self._meas_v = 0 if dc_v is None or dc_v < 0 else int(dc_v)
        self._meas_a = None if dc_a is None else int(dc_a)

    def ended(self):
        """True when no current flows or will without a new session or
        start(): idle, stopped, fault, or a handshake that stop() holds.
        Stopped only once a 0x109 of that state is out (the connector lock
        released): a clean stop (SIGINT) that exited at the transition
        while the TX side was busy (a full pty, the MCP2515's three
        buffers) left the car with the last cycle's "locked", seen in CI.
        Not "every frame out": with three buffers and five frames a cycle
        some are always pending, and the stop would always wait its 3 s.
        A fault is ended at once: with the bus off nothing goes out."""
        st = self.state
        if st == STOPPED:
            return self._sent_109
        return st == IDLE or st == FAULT or (st == HANDSHAKE and self.stop_wish is not None)

    # ------------------------------------------------------------ one tick

    def tick(self, now_ms, ev_w_request):
        """The only per-tick entry point: take the car's frames, check the
        bus, make at most one transition, set the outputs, send what is due.
        ev_w_request: what the controller wants before the vehicle limits
        (W, + into the car); it sets the direction and, with a car that
        supports dynamic control, the current offered in 0x108."""
        self._req_w = ev_w_request
        self._drain(now_ms)
        self._health(now_ms)
        self._step(now_ms)
        # the latches served this tick's step
        self._rx_faults = 0
        self._rx_status = 0
        self._rx_disabled = False
        self._rx_bus_off = False
        self._outputs(now_ms)
        self._send_due(now_ms)

    def _drain(self, now_ms):
        bus = self.bus
        f = self._frame
        ev = self.ev
        n = 0
        while n < _MAX_RX_PER_TICK and bus.recv_into(f):
            n += 1
            if f.ext or f.rtr:
                self.ignored_frames += 1
                continue
            r = decode(f.id, f.data, f.dlc, ev)
            if r > 0:
                self.rx_frames += 1
                if f.id == _ID_EV_STATUS:
                    self._t102_ms = now_ms
                    # latched: a later 0x102 of this drain may not carry it
                    self._rx_faults |= ev.faults
                    status = ev.status
                    self._rx_status |= status
                    if status & _ST_ENABLED:
                        self._enabled_seen = True
                    elif self._enabled_seen:
                        self._rx_disabled = True
                    soc = self._soc()
                    if soc is not None:
                        self.soc_cpct = soc  # the rules of this tick's step use it
                        self.soc_source = "chademo_102"
            elif r == 0:
                self.ignored_frames += 1
            else:
                self.bad_frames += 1

    def _health(self, now_ms):
        # Once a second: is the bus usable? Bus off (or an SLCAN link lost)
        # ends a session at once (latched for _step). Recovery is tried after
        # 1 s, then 2, 4, up to 8 s apart: reopening a TCP link to a dead
        # gateway can cost its connect timeout, which a control loop should
        # not pay every second.
        if self._health_ms is not None and self._age(now_ms, self._health_ms) < _HEALTH_MS:
            return
        self._health_ms = now_ms
        if self.bus.state() != STATE_BUS_OFF:
            self._recover_tries = 0
            self._recover_wait = 0
            return
        self._rx_bus_off = True
        if self._recover_wait > 0:
            self._recover_wait -= 1
            return
        self.bus.recover()
        self.recoveries += 1
        # checks to skip before the next try: 0, 1, 3, 7, 7, ... = 1, 2, 4, 8 s apart
        self._recover_wait = (1 << min(self._recover_tries, 3)) - 1
        self._recover_tries += 1

    def _step(self, now_ms):
        """The transition function: the next state from the state, the car's
        data, the timers, the charger's wishes and the request; at most one
        transition."""
        st = self.state
        new = st
        why = None
        t102 = self._t102_ms
        if self._reset_wish:
            self._reset_wish = False
            new = IDLE
            why = "reset"
        elif t102 is None:
            pass  # idle, no car
        elif st == STOPPED or st == FAULT:
            if self._age(now_ms, t102) > _AWAY_MS:
                new = IDLE  # car gone: the next 0x102 is a new session
                why = "car_gone"
        elif self._rx_bus_off:
            new = FAULT
            why = "can_bus_off"
        elif st == STOPPING:
            if self._age(now_ms, t102) > self.timeout_ms:
                new = STOPPED
                why = "car_silent"  # the car went quiet as it stopped
            elif self.ev.status & _ST_CONTACTOR_OPEN and self._abs_present_a(now_ms) <= _LOW_CURRENT_A:
                new = STOPPED
                why = "contactors_open"
            elif self._age(now_ms, self._t_state_ms) > _STOP_WAIT_MS:
                new = STOPPED
                why = "stop_wait_over"
        else:
            # idle with a first 0x102, handshake, ready, charging, discharging
            ev = self.ev
            status = ev.status
            seen = self._rx_status
            if self._age(now_ms, t102) > self.timeout_ms:
                new = FAULT
                why = "can_timeout"
            elif self._rx_faults:
                f = self._rx_faults
                i = 0
                while not f & 1:
                    f >>= 1
                    i += 1
                new = FAULT
                why = _FAULT_CODES[i] if i < 5 else "ev_fault"
            elif seen & _ST_SYSTEM_FAULT:
                new = FAULT
                why = "ev_system_fault"
            elif ev.target_voltage_v > self.max_voltage_v:
                new = FAULT
                why = "battery_incompatible"
            elif seen & _ST_STOP_REQUEST:
                new = STOPPING
                why = "ev_stop_request"
            elif seen & _ST_NOT_PARKED:
                new = STOPPING
                why = "ev_not_parked"
            elif self._rx_disabled:
                new = STOPPING
                why = "ev_disabled"
            elif st == IDLE:
                new = HANDSHAKE
                why = "ev_0x102"
            elif st == HANDSHAKE:
                if self.stop_wish is None and self._enabled_seen and not status & _ST_CONTACTOR_OPEN:
                    new = READY
                    why = "ev_contactors_closed"
            elif self.stop_wish is not None:
                new = STOPPING
                why = self.stop_wish
            else:
                if not self._loop and ev.charge_current_req_a > 0:
                    self._loop = True  # the car asks for current: the charging loop
                    self._t_loop_ms = now_ms
                req = self._req_w
                if req > 0 and self._loop:
                    new = CHARGING
                elif req < 0 and self._loop and self._discharge_allowed():
                    new = DISCHARGING
                else:
                    new = READY
                why = "request"
        if new != st:
            self._enter(new, now_ms, why)

    def _enter(self, new, now_ms, why):
        # Every transition, with the new state's entry action; rare, so the
        # log line may allocate.
        old = self.state
        self.state = new
        self._t_state_ms = now_ms
        self._told = False  # this state's frames not yet encoded
        self._sent_109 = False  # nor its 0x109 sent
        self.transitions += 1
        self.last_transition = old + " -> " + new
        self.last_why = why
        if new == IDLE:
            self._clear()  # the session is over: forget the car
        elif old == IDLE:
            self.sessions += 1
        if new == FAULT or new == STOPPED:
            # the car must see the end now, not up to a cycle later: the
            # controller may stop ticking (shutdown) as soon as it is over
            self._next_tx_ms = None
        if new == FAULT:
            self.fault = why
        elif new == STOPPING:
            self.stop_reason = why
            self.stop_requested = why.startswith("ev_")  # the car asked
        log.event("chademo", {"transition": self.last_transition, "why": why})

    def _clear(self):
        # entry action of idle: no car, no session data
        self.ev.clear()
        self.fault = None
        self.stop_reason = None
        self.stop_requested = False  # the car asked to stop
        self.discharge_ok = False
        self.soc_cpct = None
        self.soc_res_cpct = 100
        self.soc_source = None
        self.soc_age_ms = None
        self._t102_ms = None  # last 0x102
        self._t_state_ms = None  # entry into the current state
        self._t_loop_ms = None  # start of the charging loop
        self._enabled_seen = False
        self._loop = False  # the car has asked for current: charging loop
        self._est_a = 0  # estimated present current, + into the car
        self._rx_faults = 0  # latched over one drain: 0x102 fault bits,
        self._rx_status = 0  # status bits,
        self._rx_disabled = False  # 102.5.0 cleared after it was set,
        self._rx_bus_off = False  # and the health check's bus off
        self._pending = 0
        self._told = False  # the current state's frames encoded
        self._sent_109 = False  # a 0x109 of the current state sent (ended())
        self._late = 0  # frames the last cycle could not send: first in this one
        self._next_tx_ms = None

    def _age(self, now_ms, then_ms):
        return self.clock.ticks_diff(now_ms, then_ms)

    # ------------------------------------------------------------ outputs

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

    def _outputs(self, now_ms):
        st = self.state
        live = st == READY or st == CHARGING or st == DISCHARGING
        self.must_stop = not live
        self.plugged = st != IDLE
        if st == IDLE:
            self.soc_cpct = None
            self.soc_source = None
            self.soc_age_ms = None
        else:
            self.soc_age_ms = self._age(now_ms, self._t102_ms)
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

    def _fresh(self, now_ms):
        return self._meas_ms is not None and self._age(now_ms, self._meas_ms) <= _MEAS_FRESH_MS

    def _basis_v(self, now_ms):
        # Volts to turn the car's amps into watts: the measured DC voltage if
        # fresh; else the lowest voltage the car declared (so the watts never
        # overstate what its current limit allows), else its target voltage.
        if self._meas_v > 0 and self._fresh(now_ms):
            return self._meas_v
        ev = self.ev
        if ev.min_discharge_voltage_v > 0:
            return ev.min_discharge_voltage_v
        if ev.min_battery_voltage_v > 0:
            return ev.min_battery_voltage_v
        return ev.target_voltage_v

    def present_v(self, now_ms):
        """0x109 present output voltage: measured DC while fresh; else the
        car's target voltage while its contactors put the battery on the
        output (ready to stopping); else 0."""
        if self._meas_v > 0 and self._fresh(now_ms):
            return self._meas_v
        st = self.state
        if st == IDLE or st == HANDSHAKE or st == STOPPED or st == FAULT:
            return 0
        ev = self.ev
        return 0 if ev.status & _ST_CONTACTOR_OPEN else ev.target_voltage_v

    def present_a(self, now_ms):
        """Present output current (A, + into the car): the measured DC
        current while fresh, else the measured power over present_v();
        without a fresh measurement the estimate."""
        if not self._fresh(now_ms):
            return self._est_a
        if self._meas_a is not None:
            return self._meas_a
        v = self.present_v(now_ms)
        w = self._meas_w
        if v <= 0:
            return 0
        return (w + v // 2) // v if w >= 0 else -((v // 2 - w) // v)

    def _abs_present_a(self, now_ms):
        a = self.present_a(now_ms)
        return -a if a < 0 else a

    def _estimate(self, now_ms):
        # Once per 100 ms cycle: the present current when nothing measures
        # it, from what we command, moved by at most _EST_STEP_A; a fresh
        # measurement resets it, so it starts from the real value if the
        # measurements stop.
        if self._fresh(now_ms):
            self._est_a = self.present_a(now_ms)
            return
        st = self.state
        target = 0
        if st == CHARGING or st == DISCHARGING:
            v = self.present_v(now_ms)
            if v <= 0:
                v = self._basis_v(now_ms)
            if v > 0:
                if st == CHARGING:
                    target = min(self._req_w, self.charge_limit_w) // v
                else:
                    target = -(min(-self._req_w, self.discharge_limit_w) // v)
        d = target - self._est_a
        if d > _EST_STEP_A:
            d = _EST_STEP_A
        elif d < -_EST_STEP_A:
            d = -_EST_STEP_A
        self._est_a += d

    # ------------------------------------------------------------ frames

    def _send_due(self, now_ms):
        if self.state == IDLE:
            self._pending = 0
            self._next_tx_ms = None
            return
        due = self._next_tx_ms
        if due is None or self._age(now_ms, due) >= -_TX_EARLY_MS:
            if self._pending:
                self.tx_late += 1
            self._late = self._pending
            self._estimate(now_ms)
            self._encode(now_ms)
            self._told = True
            # The next deadline counts from the last one, so the period holds
            # on average whatever the caller's jitter; after a stall of a
            # whole cycle it restarts from now instead of sending a burst.
            if due is None or self._age(now_ms, due) >= _CYCLE_MS:
                self._next_tx_ms = self.clock.ticks_add(now_ms, _CYCLE_MS)
            else:
                self._next_tx_ms = self.clock.ticks_add(due, _CYCLE_MS)
        self._send_pending()

    def _send_pending(self):
        # A full TX buffer keeps the rest for the next tick. The frames the
        # last cycle could not send go first, so with few TX buffers (the
        # MCP2515 has three, a cycle has up to five frames) and a tick per
        # cycle no frame starves; otherwise in the table's order.
        late = self._late & self._pending
        if late and not self._send(late):
            return
        self._late = 0
        self._send(self._pending)

    def _send(self, mask):
        # -> True when every frame of mask went out
        bus = self.bus
        for flag, can_id, buf in self._tx_order:
            if mask & flag:
                if not bus.send(can_id, buf):
                    return False
                mask &= ~flag
                self._pending &= ~flag
                self.tx_frames += 1
                if flag == _TX_109 and self._told:
                    # encoded since the transition: it carries this state
                    self._sent_109 = True
        return True

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
            if self._abs_present_a(now_ms) > _LOW_CURRENT_A:
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
        ending = st == STOPPING or st == STOPPED or st == FAULT
        # 0x108: offered current, 0 once the session ends. Only a car that
        # announced dynamic control (0x110 b0) sees it change otherwise;
        # others get our maximum throughout.
        avail_a = self.max_current_a
        if ending:
            avail_a = 0
        elif ev.ext_flags & 1:
            v = self._basis_v(now_ms)
            req = self._req_w
            avail_a = min(self.max_current_a, (req + v - 1) // v) if req > 0 and v > 0 else 0
        threshold = self.max_voltage_v
        if 0 < ev.max_battery_voltage_v < threshold:
            threshold = ev.max_battery_voltage_v
        encode_108(self._b108, self.weld_detect, self.max_voltage_v, avail_a, threshold)
        # 0x109
        amps = self.present_a(now_ms)
        remaining_min = ev.max_charge_time_s // 60
        if self._loop and self._t_loop_ms is not None:
            remaining_min -= self._age(now_ms, self._t_loop_ms) // 60000
        encode_109(self._b109, _PROTOCOL, self.present_v(now_ms), amps if amps > 0 else 0, self.v2h,
                   self._status_byte(now_ms), 0xFF, remaining_min)
        p = _TX_108 | _TX_109
        if ev.seen & 8:
            # mirror only what we support: dynamic control (0x108 follows
            # the controller's request); not high current/voltage control
            encode_118(self._b118, ev.ext_flags & 1)
            p |= _TX_118
        if self.v2h:
            if ending:
                avail_in_a = 0
                lower_v = max(self.min_voltage_v, ev.min_discharge_voltage_v)
            elif ev.seen & 16:
                avail_in_a = self.max_discharge_current_a
                lower_v = max(self.min_voltage_v, ev.min_discharge_voltage_v)
            else:
                avail_in_a = 0  # before the car's 0x200, as the capture's charger
                lower_v = self.min_voltage_v
            encode_208(self._b208, -amps if amps < 0 else 0, self.max_voltage_v, avail_in_a, lower_v)
            encode_209(self._b209, _V2H_SEQUENCE, 0)
            p |= _TX_208 | _TX_209
        self._pending = p

    def snapshot(self):
        """Diagnostics (allocates: technician and events, not the hot path)."""
        ev = self.ev
        d = VehicleSession.snapshot(self)
        d.update({
            "stop_reason": self.stop_reason, "stop_wish": self.stop_wish, "discharge_ok": self.discharge_ok,
            "sessions": self.sessions, "transitions": self.transitions, "last_transition": self.last_transition,
            "last_why": self.last_why, "target_voltage_v": ev.target_voltage_v,
            "charge_current_req_a": ev.charge_current_req_a, "max_discharge_current_a": ev.max_discharge_current_a,
            "ev_status": ev.status, "ev_faults": ev.faults, "rx_frames": self.rx_frames,
            "bad_frames": self.bad_frames, "ignored_frames": self.ignored_frames, "tx_frames": self.tx_frames,
            "tx_late": self.tx_late,
        })
        return d
