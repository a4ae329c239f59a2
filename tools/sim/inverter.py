"""A bidirectional inverter with an EV battery behind it, speaking SunSpec.

Served by pymodbus as Modbus RTU frames over TCP, the way an RS-485 gateway
would pass them. The register map comes from tools/sim/sunspec_map.py (laid
out from pysunspec2's model definitions); this module only gives the points
their behaviour.

Signs: SunSpec 701 W and 704 WSet are positive for power INJECTED into the
grid. Inside the simulator everything is `ev_w`, power into the EV battery,
positive when charging, so ev_w = -W. The conversion happens only where a
register is read or written. 714 (DC measurement, when the model list has it)
follows the same DER convention: DCW and DCA are positive when the DC port
delivers power toward the grid (the car discharging). Its one port (more with
group_counts={714: {"Prt": n}}, typed by dc_port_types) is the car's battery
(the EV port, else ESS, else BIDIR): DCV its open-circuit voltage at the
present SoC, DCW the power at its terminals, DCA = DCW / DCV; other ports
read 0 V, 0 A and 0 W. The totals are the car port's.

Time is simulated time from an injected clock (`now()` in unix seconds, see
clock.py), so a warped day runs with the same timers the firmware sees.
"""

import asyncio
import math
import time
import traceback
from collections import deque

from .battery import EvBattery
from .grid import Grid
from .sunspec_map import SunSpecMap, load_model_def

DEFAULT_MODELS = (1, 701, 702, 704, 713, 715, 711)
# with the DC measurement (714) after 713: opt-in, since the default list is
# what the tests and benchmarks pin (refresh transactions, models found)
DC_MODELS = (1, 701, 702, 704, 713, 714, 715, 711)
_REQUIRED_MODELS = {1, 701, 704}
_LL_V = 400.0  # three-phase line-to-line voltage of the simulated site
_LN_V = 230.0


class SimInverter:
    def __init__(self, clock, *, unit=1, base_addr=40000, models=DEFAULT_MODELS, omit_points=(),
                 group_counts=None, battery=None, capacity_wh=60000.0, soc_pct=50.0, soh_pct=100.0,
                 max_charge_w=11000.0, max_discharge_w=11000.0, ramp_w_per_s=20000.0, grid=None,
                 w_sf=0, hz_sf=-3, totwh_sf=0, wset_sf=0, pct_sf=-1, wh_sf=None,
                 wh_abs=0.0, wh_inj=0.0, mn="V2G-Sim", md="BiDi-11k", sn="SIM-0001",
                 version="1.0.0", step_s=0.002, dca_sf=-2, dcv_sf=-1, dc_port_types=("EV",)):
        missing = _REQUIRED_MODELS - set(models)
        if missing:
            raise ValueError("an inverter needs models %s" % sorted(missing))
        self.clock = clock
        self.unit = unit
        self.grid = grid or Grid()
        self.battery = battery or EvBattery(capacity_wh, soc_pct, max_charge_w=max_charge_w,
                                            max_discharge_w=max_discharge_w)
        self.max_charge_w = float(max_charge_w)
        self.max_discharge_w = float(max_discharge_w)
        self.wmax_rtg_w = max(self.max_charge_w, self.max_discharge_w)
        self.ramp_w_per_s = float(ramp_w_per_s)
        self.soh_pct = soh_pct
        self.step_s = step_s
        if self.wmax_rtg_w / 10 ** w_sf > 32767:
            raise ValueError("W_SF=%d cannot carry %d W in an int16" % (w_sf, self.wmax_rtg_w))

        self.ev_w = 0.0  # actual power into the EV, W
        self.hz = self.grid.nominal_hz
        self.wh_abs = float(wh_abs)  # lifetime energy from the grid (701 TotWhAbs)
        self.wh_inj = float(wh_inj)  # lifetime energy into the grid (701 TotWhInj)
        self.alarm = 0  # 701 Alrm bits; non-zero means tripped
        # a car on the DC port (CONTRACT section 8): without one the stage
        # moves no power and 713 has no SoC to report (not implemented)
        self.plugged = True
        # the owner's trips, [(leave_s, back_s, trip_wh)] in sim time, in
        # order: away between the two, back with the trip's energy gone
        self.away = []
        # Counters and logs for tests and observers.
        self.reversions = 0
        self.transactions = 0
        self.writes = deque(maxlen=100000)  # (sim_s, WSet in W, grid sign) per write of WSet
        self.controller_hb_s = None  # sim time of the last ControllerHb write
        # Setpoint refreshes (writes that restart the reversion timer) and the
        # longest time between two of them, in simulated and in wall seconds:
        # at x1000 a wall-clock stall of either process is 1000 times longer
        # here, so the report shows how close the day came to a reversion.
        self.refreshes = 0
        self.max_refresh_gap_s = None
        self.max_refresh_gap_real_s = None
        self._lease_real_s = None
        self._last_step_s = None
        self._hb_epoch_s = None
        self._lease_start_s = None  # last write of WSet/WSetEna starts the revert timer
        self._reverted = False
        self._drop_requests = 0
        self._corrupt_responses = 0
        self._busy_responses = 0
        self._server = None
        self._task = None
        self.port = None

        self.map = SunSpecMap(base_addr, list(models), omit_points, group_counts)
        self.map.on_write = self._on_write
        self._init_points(mn, md, sn, version, w_sf, hz_sf, totwh_sf, wset_sf, pct_sf, wh_sf)
        self._car_port = None  # 714: index of the port the battery sits on
        if self.map.has_model(714):
            self._init_714(w_sf, totwh_sf, dca_sf, dcv_sf, dc_port_types)
        self._publish(self._target_grid_w())

    # ---- register set-up ------------------------------------------------------

    def _sym(self, model_id, point, symbol):
        return self.map.symbol(model_id, point, symbol)

    def _init_points(self, mn, md, sn, version, w_sf, hz_sf, totwh_sf, wset_sf, pct_sf, wh_sf):
        m = self.map
        for name, text in (("Mn", mn), ("Md", md), ("Vr", version), ("SN", sn)):
            m.set(1, name, text)
        m.set(1, "DA", self.unit)

        for name, sf in (("W_SF", w_sf), ("VA_SF", w_sf), ("Var_SF", w_sf), ("Hz_SF", hz_sf),
                         ("TotWh_SF", totwh_sf), ("V_SF", -1), ("A_SF", -2), ("PF_SF", -3)):
            m.set(701, name, sf)
        m.set(701, "ACType", self._sym(701, "ACType", "THREE_PHASE"))
        m.set(701, "ConnSt", self._sym(701, "ConnSt", "CONNECTED"))
        m.set_scaled(701, "LLV", _LL_V)
        m.set_scaled(701, "LNV", _LN_V)

        if m.has_model(702):
            for name, sf in (("W_SF", w_sf), ("VA_SF", w_sf), ("V_SF", -1)):
                m.set(702, name, sf)
            for name, w in (("WMaxRtg", self.wmax_rtg_w), ("VAMaxRtg", self.wmax_rtg_w),
                            ("WChaRteMaxRtg", self.max_charge_w), ("WDisChaRteMaxRtg", self.max_discharge_w),
                            ("WMax", self.wmax_rtg_w), ("WChaRteMax", self.max_charge_w),
                            ("WDisChaRteMax", self.max_discharge_w)):
                m.set_scaled(702, name, w)
            m.set_scaled(702, "VNomRtg", _LN_V)
            modes = 1 << self._sym(702, "CtrlModes", "FIXED_W")
            if m.has_model(711):
                modes |= 1 << self._sym(702, "CtrlModes", "FREQ_WATT")
            m.set(702, "CtrlModes", modes)

        m.set(704, "WSet_SF", wset_sf)
        m.set(704, "WSetPct_SF", 0)
        m.set(704, "WSetEna", self._sym(704, "WSetEna", "DISABLED"))
        m.set(704, "WSetMod", self._sym(704, "WSetMod", "WATTS"))
        for name in ("WSet", "WSetRvrt", "WSetPct", "WSetPctRvrt", "WSetRvrtTms", "WSetRvrtRem"):
            m.set(704, name, 0)
        # WSetEnaRvrt stays not implemented until a controller writes it; then
        # a reversion also sets WSetEna to it.

        if m.has_model(713):
            if wh_sf is None:  # the smallest SF that fits the capacity in a uint16
                wh_sf = 0
                while self.battery.capacity_wh / 10 ** wh_sf > 65534:
                    wh_sf += 1
            m.set(713, "WH_SF", wh_sf)
            m.set(713, "Pct_SF", pct_sf)
            m.set_scaled(713, "WHRtg", self.battery.capacity_wh)
            m.set_scaled(713, "SoH", self.soh_pct)

        if m.has_model(715):
            m.set(715, "LocRemCtl", self._sym(715, "LocRemCtl", "REMOTE"))
            m.set(715, "DERHb", 0)
            m.set(715, "ControllerHb", 0)
            m.set(715, "AlarmReset", 0)
            m.set(715, "OpCtl", self._sym(715, "OpCtl", "START"))

        if m.has_model(711):
            m.set(711, "Ena", self._sym(711, "Ena", "DISABLED"))
            m.set(711, "AdptCtlReq", 0)
            m.set(711, "AdptCtlRslt", self._sym(711, "AdptCtlRslt", "COMPLETED"))
            for name in ("RvrtTms", "RvrtRem", "RvrtCtl"):
                m.set(711, name, 0)
            for name, sf in (("Db_SF", -3), ("K_SF", -3), ("RspTms_SF", 0)):
                m.set(711, name, sf)
            # IEEE 1547 category II defaults: 36 mHz deadband, 5 % droop.
            for i in range(m.get(711, "NCtl")):
                for name, value in (("DbOf", 0.036), ("DbUf", 0.036), ("KOf", 0.05), ("KUf", 0.05),
                                    ("RspTms", 5)):
                    m.set_scaled(711, "Ctl.%s" % name, value, index=i)
                m.set(711, "Ctl.PMin", -100, index=i)
                m.set(711, "Ctl.ReadOnly", 0, index=i)

    def _init_714(self, w_sf, totwh_sf, dca_sf, dcv_sf, port_types):
        m = self.map
        for name, sf in (("DCA_SF", dca_sf), ("DCV_SF", dcv_sf), ("DCW_SF", w_sf),
                         ("DCWH_SF", totwh_sf), ("Tmp_SF", 0)):
            m.set(714, name, sf)
        m.set(714, "PrtAlrms", 0)
        types = [port_types[i % len(port_types)] for i in range(m.get(714, "NPrt"))]
        for i, name in enumerate(types):
            m.set(714, "Prt.PrtTyp", self._port_sym("PrtTyp", name), index=i)
            m.set(714, "Prt.ID", i + 1, index=i)
            m.set(714, "Prt.IDStr", "DC%d" % (i + 1), index=i)
            m.set(714, "Prt.Tmp", 25, index=i)
            m.set(714, "Prt.DCAlrm", 0, index=i)
        # the car is on the EV port, else the storage one, else a bidirectional one
        for name in ("EV", "ESS", "BIDIR"):
            if name in types:
                self._car_port = types.index(name)
                break

    def _port_sym(self, point, symbol):
        """An enum symbol of a 714 port point, from the model definition (the
        map may hold no port instance to ask)."""
        for group in load_model_def(714)["group"].get("groups", ()):
            for pdef in group.get("points", ()) if group["name"] == "Prt" else ():
                if pdef["name"] == point:
                    for sym in pdef.get("symbols", ()):
                        if sym["name"] == symbol:
                            return sym["value"]
        raise KeyError("714 Prt.%s has no symbol %s" % (point, symbol))

    def _publish_714(self):
        """The DC side: the battery on its port, 0 on the others (DER sign)."""
        m = self.map
        dc_w = -self.ev_w  # + toward the grid
        dc_v = self.battery.ocv_v()
        dc_a = dc_w / dc_v
        m.set_scaled(714, "DCW", dc_w)
        m.set_scaled(714, "DCA", dc_a)
        sf = m.scale_factor(714, "DCWhInj")
        m.set(714, "DCWhInj", int(self.wh_inj // 10 ** sf))
        m.set(714, "DCWhAbs", int(self.wh_abs // 10 ** sf))
        nprt = m.get(714, "NPrt")
        on = self._port_sym("DCSta", "ERROR" if self.alarm else "ON") if nprt else None
        for i in range(nprt):
            car = i == self._car_port
            m.set_scaled(714, "Prt.DCW", dc_w if car else 0, index=i)
            m.set_scaled(714, "Prt.DCA", dc_a if car else 0, index=i)
            m.set_scaled(714, "Prt.DCV", dc_v if car else 0, index=i)
            m.set(714, "Prt.DCWhInj", int(self.wh_inj // 10 ** sf) if car else 0, index=i)
            m.set(714, "Prt.DCWhAbs", int(self.wh_abs // 10 ** sf) if car else 0, index=i)
            m.set(714, "Prt.DCSta", on, index=i)

    # ---- what the bus did ----------------------------------------------------

    def _on_write(self, addr, values):
        """Called by the map after a Modbus write landed."""
        now_s = self.clock.now()
        written = {(p.model_id, p.name) for p in self.map.points_at(addr, len(values))}
        if written & {(704, "WSet"), (704, "WSetEna"), (704, "WSetPct")}:
            self._refreshed(now_s, time.monotonic())
            self._lease_start_s = now_s
            self._reverted = False
        if (704, "WSet") in written:
            self.writes.append((now_s, self.map.get_scaled(704, "WSet")))
        if (715, "ControllerHb") in written:
            self.controller_hb_s = now_s
        if (715, "AlarmReset") in written and self.map.get(715, "AlarmReset"):
            self.clear_fault()
            self.map.set(715, "AlarmReset", 0)
        if (711, "AdptCtlReq") in written:
            # Ctl[0] is the active control; adopting is acknowledged at once.
            self.map.set(711, "AdptCtlRslt", self._sym(711, "AdptCtlRslt", "COMPLETED"))

    def _refreshed(self, now_s, real_s):
        if self._lease_start_s is not None:
            gap_s = now_s - self._lease_start_s
            gap_real_s = real_s - self._lease_real_s
            if self.max_refresh_gap_s is None or gap_s > self.max_refresh_gap_s:
                self.max_refresh_gap_s = gap_s
            if self.max_refresh_gap_real_s is None or gap_real_s > self.max_refresh_gap_real_s:
                self.max_refresh_gap_real_s = gap_real_s
        self._lease_real_s = real_s
        self.refreshes += 1

    # ---- test hooks ------------------------------------------------------------

    def inject_fault(self, alarm_bit):
        """Trip: set a 701 Alrm bit (number or symbol name), output drops to 0 at once."""
        if isinstance(alarm_bit, str):
            alarm_bit = self._sym(701, "Alrm", alarm_bit)
        self.alarm |= 1 << alarm_bit
        self.ev_w = 0.0
        self._publish(0.0)

    def clear_fault(self):
        self.alarm = 0
        self._publish(self._target_grid_w())

    def set_freq_hz(self, hz):
        """Pin the grid frequency (None: back to the grid model's own)."""
        self.grid.set_override_hz(hz)

    def drop_requests(self, n):
        """Ignore the next n requests to this unit (the master times out)."""
        self._drop_requests = n

    def corrupt_responses(self, n):
        """Break the CRC of the next n responses."""
        self._corrupt_responses = n

    def busy_responses(self, n):
        """Answer the next n requests with exception 06 (device busy)."""
        self._busy_responses = n

    # ---- control and physics -------------------------------------------------

    def _stopped(self):
        if not self.map.has_model(715):
            return False
        return self.map.get(715, "OpCtl") in (self._sym(715, "OpCtl", "STOP"),
                                              self._sym(715, "OpCtl", "ENTER_STANDBY"))

    def _limits_w(self):
        """(most absorbed, most injected) in W: the ratings, narrowed by 702 settings."""

        def setting_w(name):
            value = self.map.get_scaled(702, name) if self.map.has_model(702) else None
            return math.inf if value is None else value

        charge_w = min(self.max_charge_w, setting_w("WMax"), setting_w("WChaRteMax"))
        discharge_w = min(self.max_discharge_w, setting_w("WMax"), setting_w("WDisChaRteMax"))
        return charge_w, discharge_w

    def _target_grid_w(self):
        """The power the inverter is asked to inject (grid sign), within its limits."""
        m = self.map
        if self.alarm or self._stopped():
            return 0.0
        grid_w = 0.0
        if m.get(704, "WSetEna") == self._sym(704, "WSetEna", "ENABLED"):
            mode = m.get(704, "WSetMod")
            if mode == self._sym(704, "WSetMod", "WATTS"):
                grid_w = m.get_scaled(704, "WSet") or 0.0
            elif mode == self._sym(704, "WSetMod", "W_MAX_PCT"):
                grid_w = (m.get_scaled(704, "WSetPct") or 0.0) / 100.0 * self.wmax_rtg_w
        grid_w = self._droop_w(grid_w)
        charge_w, discharge_w = self._limits_w()
        return max(-charge_w, min(discharge_w, grid_w))

    def _droop_w(self, grid_w):
        """711 frequency-watt: less injection above the deadband, more below.

        Uses Ctl[0] as the active control and responds without its RspTms lag
        (the output ramp already keeps it physical).
        """
        m = self.map
        if not m.has_model(711) or m.get(711, "Ena") != self._sym(711, "Ena", "ENABLED"):
            return grid_w
        nominal_hz = self.grid.nominal_hz
        dev_hz = self.hz - nominal_hz
        db_of, db_uf = m.get_scaled(711, "Ctl.DbOf", 0), m.get_scaled(711, "Ctl.DbUf", 0)
        k_of, k_uf = m.get_scaled(711, "Ctl.KOf", 0), m.get_scaled(711, "Ctl.KUf", 0)
        if k_of and dev_hz > db_of:
            grid_w -= (dev_hz - db_of) / (nominal_hz * k_of) * self.wmax_rtg_w
            pmin_pct = m.get(711, "Ctl.PMin", 0)
            if pmin_pct is not None:
                grid_w = max(grid_w, pmin_pct / 100.0 * self.wmax_rtg_w)
        elif k_uf and dev_hz < -db_uf:
            grid_w += (-dev_hz - db_uf) / (nominal_hz * k_uf) * self.wmax_rtg_w
        return grid_w

    def _run_revert_timer(self, now_s):
        """704: without a fresh WSet/WSetEna for WSetRvrtTms s, fall back to WSetRvrt."""
        m = self.map
        timeout_s = m.get(704, "WSetRvrtTms") or 0
        running = (timeout_s > 0 and self._lease_start_s is not None and not self._reverted
                   and m.get(704, "WSetEna") == self._sym(704, "WSetEna", "ENABLED"))
        left_s = timeout_s - (now_s - self._lease_start_s) if running else 0
        if running and left_s <= 0:
            m.set(704, "WSet", m.get(704, "WSetRvrt") or 0)
            m.set(704, "WSetPct", m.get(704, "WSetPctRvrt") or 0)
            ena_rvrt = m.get(704, "WSetEnaRvrt")
            if ena_rvrt is not None:
                m.set(704, "WSetEna", ena_rvrt)
            self._reverted = True
            self.reversions += 1
            left_s = 0
        # whole seconds left, rounded up; to the ms first so float noise in
        # unix-time sums does not add a second
        m.set(704, "WSetRvrtRem", math.ceil(round(left_s, 3)) if left_s > 0 else 0)

    def step(self, now_s):
        """Advance the physics to sim time now_s (unix seconds)."""
        dt_s = 0.0 if self._last_step_s is None else max(0.0, now_s - self._last_step_s)
        self._last_step_s = now_s
        if self._hb_epoch_s is None:
            self._hb_epoch_s = now_s
        self.hz = self.grid.freq_hz(now_s)
        self._follow_trips(now_s)
        self._run_revert_timer(now_s)
        target_grid_w = self._target_grid_w()
        # before the clock's epoch the simulated day has not begun (make sim
        # starts its processes a little ahead): the car starts the day with
        # the SoC it was given, whatever a controller asked before
        before_day = now_s < getattr(self.clock, "sim_epoch", now_s)
        if self.alarm or not self.plugged or before_day:
            self.ev_w = 0.0
        else:
            # The power stage slews at a finite rate; the battery may accept less.
            max_change_w = self.ramp_w_per_s * dt_s
            change_w = max(-max_change_w, min(max_change_w, -target_grid_w - self.ev_w))
            self.ev_w = self.battery.step(self.ev_w + change_w, dt_s)
        if self.ev_w > 0:
            self.wh_abs += self.ev_w * dt_s / 3600.0
        else:
            self.wh_inj += -self.ev_w * dt_s / 3600.0
        self._publish(target_grid_w, now_s)

    def _follow_trips(self, now_s):
        while self.away:
            leave_s, back_s, trip_wh = self.away[0]
            if now_s >= back_s:
                self.battery.drive(trip_wh)  # (a step may pass the whole trip at once)
                self.plugged = True
                self.away.pop(0)
                continue
            if now_s >= leave_s:
                self.plugged = False
            return

    def _publish(self, target_grid_w, now_s=None):
        """Write the measurements into the map (what a Modbus read will see)."""
        m = self.map
        grid_w = -self.ev_w
        m.set_scaled(701, "W", grid_w)
        m.set_scaled(701, "VA", abs(grid_w))
        m.set_scaled(701, "Var", 0)
        m.set_scaled(701, "PF", 1.0)
        m.set_scaled(701, "A", abs(grid_w) / (math.sqrt(3) * _LL_V))
        m.set_scaled(701, "Hz", self.hz)
        sf = m.scale_factor(701, "TotWhAbs")
        m.set(701, "TotWhAbs", int(self.wh_abs // 10 ** sf))
        m.set(701, "TotWhInj", int(self.wh_inj // 10 ** sf))
        m.set(701, "Alrm", self.alarm)
        stopped = self._stopped()
        m.set(701, "St", self._sym(701, "St", "OFF" if stopped else "ON"))
        if self.alarm:
            state = "FAULT"
        elif stopped:
            state = "OFF"
        elif abs(self.ev_w) >= 1.0 or target_grid_w:
            state = "RUNNING"
        else:
            state = "STANDBY"
        m.set(701, "InvSt", self._sym(701, "InvSt", state))
        if m.has_model(713) and not self.plugged:
            m.clear(713, "SoC")
            m.clear(713, "WHAvail")
        elif m.has_model(713):
            soc_pct = self.battery.soc_pct
            m.set_scaled(713, "SoC", soc_pct)
            m.set_scaled(713, "WHAvail", self.battery.capacity_wh * soc_pct / 100.0 * self.soh_pct / 100.0)
            m.set(713, "Sta", self._sym(713, "Sta", "ERROR" if self.alarm else "OK"))
        if m.has_model(714):
            self._publish_714()
        if m.has_model(715) and now_s is not None:
            # One beat per simulated second; skip the uint32 not-implemented value.
            m.set(715, "DERHb", int(now_s - self._hb_epoch_s) % 0xFFFFFFFF)

    # ---- observers -------------------------------------------------------------

    @property
    def soc_pct(self):
        return self.battery.soc_pct

    def snapshot(self):
        return {
            "sim_s": self._last_step_s,
            "ev_w": round(self.ev_w, 1),
            "soc_pct": round(self.battery.soc_pct, 3),
            "plugged": self.plugged,
            "wh_in": round(self.wh_abs, 2),
            "wh_out": round(self.wh_inj, 2),
            "hz": round(self.hz, 4),
            "reversions": self.reversions,
            "last_wset_w": self.writes[-1][1] if self.writes else None,
            "wset_writes": len(self.writes),
            "transactions": self.transactions,
            "alarm": self.alarm,
            "revert_s": self.map.get(704, "WSetRvrtTms") or 0,
            "refreshes": self.refreshes,
            "max_refresh_gap_s": None if self.max_refresh_gap_s is None else round(self.max_refresh_gap_s, 3),
            "max_refresh_gap_real_s": (None if self.max_refresh_gap_real_s is None
                                       else round(self.max_refresh_gap_real_s, 4)),
        }

    # ---- Modbus server -----------------------------------------------------------

    def _trace_pdu(self, sending, pdu):
        if sending:
            return pdu
        if pdu.dev_id != self.unit:
            return None  # another unit on the "bus": stay silent, as RS-485 slaves do
        self.transactions += 1
        if self._drop_requests:
            self._drop_requests -= 1
            return None
        return pdu

    def _trace_packet(self, sending, data):
        if sending and self._corrupt_responses and data:
            self._corrupt_responses -= 1
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        return data

    def _gate(self, func_code, addr, count, is_write):
        from pymodbus.constants import ExcCodes

        if self._busy_responses:
            self._busy_responses -= 1
            return ExcCodes.DEVICE_BUSY
        return None

    async def start(self, host="127.0.0.1", port=0):
        """Listen (port 0 picks a free one) and run the physics; returns the port."""
        from pymodbus.framer import FramerType
        from pymodbus.server import ModbusTcpServer

        device = self.map.sim_device(self.unit, gate=self._gate)
        self._server = ModbusTcpServer(device, address=(host, port), framer=FramerType.RTU,
                                       trace_pdu=self._trace_pdu, trace_packet=self._trace_packet)
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        self.step(self.clock.now())
        self._task = asyncio.create_task(self._physics())
        return self.port

    async def _physics(self):
        """Step every step_s of wall time, integrating whatever sim time passed."""
        try:
            while True:
                await asyncio.sleep(self.step_s)
                self.step(self.clock.now())
        except Exception:
            traceback.print_exc()  # a dead physics task must not go unnoticed
            raise

    @property
    def physics_task(self):
        return self._task

    async def stop(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        if self._server:
            await self._server.shutdown()
            self._server = None
