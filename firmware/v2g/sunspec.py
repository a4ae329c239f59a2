# SunSpec DER inverter driver over a Modbus RTU master (CONTRACT section 5).
#
# Discovery scans 40000, 0 and 50000 for "SunS", then walks the model chain
# (ID, L) to the 0xFFFF end marker. Offsets below are the published layouts
# of models 1, 701, 702, 704, 711, 713, 714, 715 (sunspec/models, as shipped
# in pysunspec2); the tests check them against a server generated from
# pysunspec2's JSON, not against these tables.
#
# A refresh reads, per needed model, one contiguous span holding exactly the
# points the controller uses (one transaction each): 701 [3..26], 713 [3..6]
# and, when the inverter has it, 714: the car's DC port's DCA, DCV, DCW
# [20 + 25k + 10..12] (or the model's total DCA, DCW [5..6] when it lists no
# ports). 714's points are never contiguous with 713's span (713's scale
# factors and 714's header and port description lie between), so 714 costs
# one more read per tick (3 registers), none without 714, and one at
# discovery (its scale factors and port types together). Scale factors are read
# at discovery (they are constants on every device we know) and re-read
# after any reconnect; so is the choice of 714 port.
#
# Sign: SunSpec W/WSet are positive for injection into the grid; the
# controller's ev_w is positive into the EV. 714's DCA and DCW follow the
# same DER convention (positive = power flowing out of the DC port into the
# DER and on to the grid: the car discharging), so they are converted the
# same way: dc_a, dc_w are + into the car. _SIGN is the only place where the
# two meet.
from micropython import const

from v2g.modbus import ModbusError, ModbusExceptionResponse

_SIGN = const(-1)  # ev_w = _SIGN * sunspec_w, and back

BASES = (40000, 0, 50000)
_END = const(0xFFFF)

# SunSpec "not implemented" markers
_NI_I16 = const(0x8000)
_NI_U16 = const(0xFFFF)

# model 701 (DERMeasureAC): refresh span [3..26]
_M701_SPAN0 = const(3)
_M701_SPAN_N = const(24)
_M701 = {"St": 3, "InvSt": 4, "ConnSt": 5, "Alrm": 6, "W": 10, "VA": 11, "Var": 12,
         "PF": 13, "A": 14, "LLV": 15, "LNV": 16, "Hz": 17, "TotWhInj": 19,
         "TotWhAbs": 23}
# points inside the span that the controller does not use (DERMode)
_M701_UNUSED = const(2)
_M701_SF = {"A_SF": 113, "V_SF": 114, "Hz_SF": 115, "W_SF": 116, "PF_SF": 117,
            "VA_SF": 118, "Var_SF": 119, "TotWh_SF": 120}
_M701_SF0 = const(113)
_M701_SF_N = const(8)
# model 713 (DERStorageCapacity): refresh span [3..6], SFs [7..8]
_M713_SPAN0 = const(3)
_M713_SPAN_N = const(4)
# model 704 (DERCtlAC): WSetEna@22 WSetMod@23 WSet@24 WSetRvrt@26 WSetPct@28
# WSetPctRvrt@29 WSetEnaRvrt@30 WSetRvrtTms@31 WSetRvrtRem@33; WSet_SF@55
_M704_CTL0 = const(22)
_M704_CTL_N = const(11)  # 22..32
_M704_WSET = const(24)
_M704_WSET_SF = const(55)
_WSETMOD_WATTS = const(1)
# model 714 (DERMeasureDC): NPrt@4, DCA@5, DCW@6, DCA_SF@15, DCV_SF@16,
# DCW_SF@17; then NPrt ports Prt[k] of 25 registers from 20: PrtTyp@+0,
# DCA@+10, DCV@+11, DCW@+12. Discovery reads [4 .. PrtTyp of the last port
# that fits in L, at most 5] in one transaction.
_M714_HEAD0 = const(4)
_M714_NPRT = const(4)
_M714_DCA = const(5)  # DCA, DCW: the totals
_M714_DCA_SF = const(15)
_M714_DCV_SF = const(16)
_M714_DCW_SF = const(17)
_M714_FIXED_L = const(18)  # L without ports
_M714_PRT0 = const(20)
_M714_PRT_LEN = const(25)
_M714_PRT_DCA = const(10)  # DCA, DCV, DCW
_M714_MAX_PRT = const(5)  # 4..120: 117 registers, under Modbus's 125
# port types for the car's side, best first: EV, ESS, BIDIR
_PRT_FOR_CAR = (2, 1, 5)
# model 702 (DERCapacity): WMaxRtg@2, WChaRteMaxRtg@10, WDisChaRteMaxRtg@11, W_SF@45
# model 715 (DERCtl): LocRemCtl@2 DERHb@3 ControllerHb@5
# model 711 (DERFreqDroop): Ena@2

_INVST_FAULT = const(6)
_STA_ERROR = const(2)
ALARM_BITS = ("GROUND_FAULT", "DC_OVER_VOLT", "AC_DISCONNECT", "DC_DISCONNECT",
              "GRID_DISCONNECT", "CABINET_OPEN", "MANUAL_SHUTDOWN", "OVER_TEMP",
              "OVER_FREQUENCY", "UNDER_FREQUENCY", "AC_OVER_VOLT", "AC_UNDER_VOLT",
              "BLOWN_STRING_FUSE", "UNDER_TEMP", "MEMORY_LOSS", "HW_TEST_FAILURE",
              "OTHER_ALARM", "OTHER_WARNING")

class NotSunSpec(ModbusError):
    pass


def _u16(b, i):
    return (b[i] << 8) | b[i + 1]


def _i16(b, i):
    v = (b[i] << 8) | b[i + 1]
    return v - 0x10000 if v & 0x8000 else v


def _u32(b, i):
    return (_u16(b, i) << 16) | _u16(b, i + 2)


def _decode(b, off, typ):
    """Raw value of a point at byte offset off, or None if not implemented."""
    if typ == "int16":
        v = _i16(b, off)
        return None if v == -0x8000 else v
    if typ in ("uint16", "enum16", "bitfield16"):
        v = _u16(b, off)
        return None if v == _NI_U16 else v
    if typ == "sunssf":
        v = _i16(b, off)
        return None if v == -0x8000 else v
    if typ in ("uint32", "bitfield32"):
        v = _u32(b, off)
        return None if v == 0xFFFFFFFF else v
    if typ == "int32":
        v = _u32(b, off)
        if v == 0x80000000:
            return None
        return v - 0x100000000 if v & 0x80000000 else v
    if typ == "uint64":
        v = (_u32(b, off) << 32) | _u32(b, off + 4)
        return None if v == 0xFFFFFFFFFFFFFFFF else v
    raise ValueError(typ)


def scaled(raw, sf, exp10=0):
    """raw * 10**(sf + exp10), rounded to int; None if either is unknown."""
    if raw is None or sf is None:
        return None
    e = sf + exp10
    if e >= 0:
        return raw * 10 ** e
    d = 10 ** -e
    return (raw + d // 2) // d if raw >= 0 else -((-raw + d // 2) // d)


def ev_w_from_sunspec(w):
    """A SunSpec DER power or current (+ toward the grid) -> + into the EV."""
    return None if w is None else _SIGN * w


def sunspec_from_ev_w(ev_w):
    return _SIGN * ev_w


class SunSpecInverter:
    def __init__(self, master, base_addr=None, revert_s=10):
        self.m = master
        self.base_addr = base_addr
        self.revert_s = revert_s
        self.models = {}  # id -> (address of ID register, L)
        self.sf = {}  # (model, name) -> int or None
        self.info = {}
        self.ratings = {}
        self.inverter_droop = False
        self.ready = False
        self.last_wset = None
        self.local_control = False
        # 714: (offset of the span refresh reads, True = a port's DCA, DCV,
        # DCW; False = the totals DCA, DCW), or None: nothing to read
        self.dc_span = None
        self.dc_port = None  # index of that port, or None
        self._wset_buf = bytearray(4)  # WSet, for every setpoint write after the first

    # --- discovery

    def discover(self):
        """Find the SunSpec map and read constants. Raises ModbusError."""
        self.ready = False
        bases = (self.base_addr,) if self.base_addr is not None else BASES
        base = None
        for b in bases:
            try:
                r = self.m.read_holding(b, 2)
            except ModbusExceptionResponse:
                # "no such address" is a normal answer while scanning; a dead
                # link (LinkLost) is not and propagates.
                continue
            if bytes(r) == b"SunS":
                base = b
                break
        if base is None:
            raise NotSunSpec("no SunS marker at " + ", ".join(str(b) for b in bases))
        self.base = base
        models = {}
        addr = base + 2
        for _ in range(64):
            r = self.m.read_holding(addr, 2)
            mid, length = _u16(r, 0), _u16(r, 2)
            if mid == _END:
                break
            models[mid] = (addr, length)
            addr += 2 + length
        self.models = models
        for need in (1, 701, 704):
            if need not in models:
                raise NotSunSpec("model %d missing" % need)
        self._read_common()
        self._read_scale_factors()
        self._read_ratings()
        self._read_714()
        if 711 in models:
            r = self._read(711, 2, 1)
            self.inverter_droop = _decode(r, 0, "enum16") == 1
        self.ready = True
        self.last_wset = None
        return models

    def _read(self, model, offset, count):
        return self.m.read_holding(self.models[model][0] + offset, count)

    def _read_common(self):
        r = bytes(self._read(1, 2, 64))

        def text(i, n):
            raw = r[2 * i : 2 * (i + n)].split(b"\0")[0]
            try:
                return raw.decode()
            except UnicodeError:
                return repr(raw)

        self.info = {"Mn": text(0, 16), "Md": text(16, 16), "Vr": text(40, 8), "SN": text(48, 16)}

    def _read_scale_factors(self):
        sf = {}
        r = self._read(701, _M701_SF0, _M701_SF_N)
        for name, off in _M701_SF.items():
            sf[(701, name)] = _decode(r, 2 * (off - _M701_SF0), "sunssf")
        r = self._read(704, _M704_WSET_SF, 1)
        sf[(704, "WSet_SF")] = _decode(r, 0, "sunssf")
        if 713 in self.models:
            r = self._read(713, 7, 2)
            sf[(713, "WH_SF")] = _decode(r, 0, "sunssf")
            sf[(713, "Pct_SF")] = _decode(r, 2, "sunssf")
        if 702 in self.models:
            r = self._read(702, 45, 1)
            sf[(702, "W_SF")] = _decode(r, 0, "sunssf")
        self.sf = sf

    def _read_ratings(self):
        if 702 not in self.models:
            return
        r = self._read(702, 2, 10)
        s = self.sf.get((702, "W_SF"))
        self.ratings = {
            "w_max": scaled(_decode(r, 0, "uint16"), s),
            "charge_w_max": scaled(_decode(r, 16, "uint16"), s),
            "discharge_w_max": scaled(_decode(r, 18, "uint16"), s),
        }

    def _read_714(self):
        """714's scale factors and the span refresh reads: the car's port
        (the first EV port, else ESS, else BIDIR; a lone port of unknown
        type counts), else, with no ports listed, the model's totals; with
        ports that are none of these (PV only), nothing."""
        self.dc_span = None
        self.dc_port = None
        if 714 not in self.models:
            return
        fit = min(_M714_MAX_PRT, max(0, (self.models[714][1] - _M714_FIXED_L) // _M714_PRT_LEN))
        end = _M714_PRT0 + _M714_PRT_LEN * (fit - 1) if fit else _M714_DCW_SF
        r = self._read(714, _M714_HEAD0, end - _M714_HEAD0 + 1)

        def at(off, typ):
            return _decode(r, 2 * (off - _M714_HEAD0), typ)

        sf = self.sf
        sf[(714, "DCA_SF")] = at(_M714_DCA_SF, "sunssf")
        sf[(714, "DCV_SF")] = at(_M714_DCV_SF, "sunssf")
        sf[(714, "DCW_SF")] = at(_M714_DCW_SF, "sunssf")
        n = min(fit, at(_M714_NPRT, "uint16") or 0)
        if not n:
            self.dc_span = (_M714_DCA, False)
            return
        types = [at(_M714_PRT0 + _M714_PRT_LEN * k, "enum16") for k in range(n)]
        port = None
        for want in _PRT_FOR_CAR:
            if want in types:
                port = types.index(want)
                break
        if port is None and n == 1 and types[0] is None:
            port = 0
        if port is not None:
            self.dc_port = port
            self.dc_span = (_M714_PRT0 + _M714_PRT_LEN * port + _M714_PRT_DCA, True)

    def soc_resolution_cpct(self):
        s = self.sf.get((713, "Pct_SF"))
        return 1 if s is None else max(1, 10 ** (s + 2) if s + 2 >= 0 else 1)

    # --- every tick

    def refresh(self, meas, tick):
        """Read the needed 701, 713 and 714 points into meas (v2g.meas.Meas);
        what the device lacks is left None. Raises ModbusError (LinkLost
        after bounded retries)."""
        r = self._read(701, _M701_SPAN0, _M701_SPAN_N)
        sf = self.sf
        base = _M701_SPAN0

        def pt(name, typ):
            return _decode(r, 2 * (_M701[name] - base), typ)

        meas.ev_w = ev_w_from_sunspec(scaled(pt("W", "int16"), sf[(701, "W_SF")]))
        meas.ev_tick = tick
        meas.hz_mhz = scaled(pt("Hz", "uint32"), sf[(701, "Hz_SF")], 3)
        meas.hz_tick = tick
        tot = sf[(701, "TotWh_SF")]
        meas.wh_out = scaled(pt("TotWhInj", "uint64"), tot)
        meas.wh_in = scaled(pt("TotWhAbs", "uint64"), tot)
        meas.ac_v = scaled(pt("LNV", "uint16"), sf[(701, "V_SF")]) or scaled(pt("LLV", "uint16"), sf[(701, "V_SF")])
        meas.ac_a = scaled(pt("A", "int16"), sf[(701, "A_SF")], 2)  # 0.01 A
        meas.var = scaled(pt("Var", "int16"), sf[(701, "Var_SF")])
        meas.va = scaled(pt("VA", "int16"), sf[(701, "VA_SF")])
        meas.pf_c = scaled(pt("PF", "int16"), sf[(701, "PF_SF")], 2)
        meas.inv_state = pt("InvSt", "enum16")
        fault = None
        if meas.inv_state == _INVST_FAULT:
            fault = "inverter_state_fault"
        alarm = pt("Alrm", "bitfield32")
        if alarm:
            fault = "inverter_alarm:" + alarm_name(alarm)
        if 713 in self.models:
            r = self._read(713, _M713_SPAN0, _M713_SPAN_N)
            soc = _decode(r, 2, "uint16")
            # a DC stage with no car behind it has no SoC to report
            meas.plugged = soc is not None
            # SoC in 0.01 %: Pct_SF is normally -2..0
            meas.soc_cpct = meas.inv_soc_cpct = scaled(soc, sf.get((713, "Pct_SF")), 2)
            meas.soc_tick = tick
            meas.soc_res_cpct = self.soc_resolution_cpct()
            meas.wh_avail = scaled(_decode(r, 0, "uint16"), sf.get((713, "WH_SF")))
            meas.soh_cpct = scaled(_decode(r, 4, "uint16"), sf.get((713, "Pct_SF")), 2)
            if _decode(r, 6, "enum16") == _STA_ERROR and fault is None:
                fault = "storage_error"
        else:
            meas.plugged = False  # no storage model: no SoC, no car to protect
        self._refresh_714(meas)
        meas.inv_fault = fault
        return True

    def _refresh_714(self, meas):
        span = self.dc_span
        if span is None:
            meas.dc_v = meas.dc_a = meas.dc_w = None
            return
        off, port = span
        sf = self.sf
        r = self._read(714, off, 3 if port else 2)
        meas.dc_a = ev_w_from_sunspec(scaled(_decode(r, 0, "int16"), sf[(714, "DCA_SF")]))
        if port:
            meas.dc_v = scaled(_decode(r, 2, "uint16"), sf[(714, "DCV_SF")])
            w = _decode(r, 4, "int16")
        else:
            meas.dc_v = None
            w = _decode(r, 2, "int16")
        meas.dc_w = ev_w_from_sunspec(scaled(w, sf[(714, "DCW_SF")]))

    def needed_registers(self):
        """(span registers read, registers actually used) per refresh, for
        the bytes-on-the-wire benchmark."""
        spans = [(_M701_SPAN_N, _M701_SPAN_N - _M701_UNUSED)]
        if 713 in self.models:
            spans.append((_M713_SPAN_N, _M713_SPAN_N))
        if self.dc_span is not None:
            n = 3 if self.dc_span[1] else 2
            spans.append((n, n))
        return spans

    # --- setpoint

    def write_setpoint(self, ev_w):
        """Command ev_w through 704 WSet with a reversion timer; the first
        write sets up WSetEna, WSetMod, WSetRvrt = 0 and WSetRvrtTms."""
        sf = self.sf[(704, "WSet_SF")] or 0
        raw = sunspec_from_ev_w(ev_w)
        if sf > 0:
            # round toward zero: never command more than asked
            d = 10 ** sf
            raw = raw // d if raw >= 0 else -(-raw // d)
        elif sf < 0:
            raw = raw * 10 ** -sf
        raw = max(-0x7FFFFFFF, min(0x7FFFFFFF, raw)) & 0xFFFFFFFF
        if self.last_wset is None:
            r = bytearray(self._read(704, _M704_CTL0, _M704_CTL_N))
            _put16(r, 0, 1)  # WSetEna = ENABLED
            _put16(r, 2, _WSETMOD_WATTS)
            _put32(r, 4, raw)  # WSet
            _put32(r, 8, 0)  # WSetRvrt: 0 W if we stop refreshing
            _put16(r, 16, 1)  # WSetEnaRvrt: stay enabled (at 0 W) on reversion
            _put32(r, 18, self.revert_s)  # WSetRvrtTms
            self.m.write_multiple(self.models[704][0] + _M704_CTL0, r)
        else:
            b = self._wset_buf  # made once: the write that ends an error path must not need the heap
            _put32(b, 0, raw)
            self.m.write_multiple(self.models[704][0] + _M704_WSET, b)
        self.last_wset = ev_w

    def heartbeat(self, count):
        """715: write ControllerHb, read LocRemCtl (1 = local control)."""
        if 715 not in self.models:
            return
        b = bytearray(4)
        _put32(b, 0, count & 0xFFFFFFFF)
        self.m.write_multiple(self.models[715][0] + 5, b)
        r = self._read(715, 2, 1)
        self.local_control = _decode(r, 0, "enum16") == 1

def alarm_name(bits):
    for i, name in enumerate(ALARM_BITS):
        if bits & (1 << i):
            return name
    return "BIT%d" % (len(bin(bits)) - 3)


def _put16(b, i, v):
    b[i] = (v >> 8) & 0xFF
    b[i + 1] = v & 0xFF


def _put32(b, i, v):
    _put16(b, i, (v >> 16) & 0xFFFF)
    _put16(b, i + 2, v & 0xFFFF)
