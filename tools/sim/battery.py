"""The EV battery behind the bidirectional inverter.

`ev_w` is power at the charger's terminals into the car, positive charging
(the controller's sign). Losses sit between the terminals and the cells:
charging stores ev_w * charge_eff, discharging drains |ev_w| / discharge_eff.
Acceptance tapers near full and near empty as a car's BMS would, so a
controller sees real power fall short of its setpoint at the ends of the range.
The pack's voltage is its open-circuit voltage at the present SoC (ocv_v():
no internal resistance), enough for the inverter's DC measurements (714).
"""

_TAPER_HIGH_PCT = 90.0  # above this, charge acceptance falls linearly ...
_TAPER_LOW_PCT = 10.0  # ... below this, discharge does
_TAPER_FLOOR = 0.1  # ... to this share of the maximum at 100 % / 0 %
# Open-circuit voltage of one NMC cell against SoC (the usual shape: steep at
# both ends, flat in the middle), interpolated linearly between the points.
_CELL_OCV = ((0.0, 3.00), (5.0, 3.45), (10.0, 3.55), (20.0, 3.63), (40.0, 3.72),
             (60.0, 3.85), (80.0, 4.00), (95.0, 4.12), (100.0, 4.18))
_CELLS_SERIES = 96  # a 400 V class car: 288..401 V


class EvBattery:
    def __init__(self, capacity_wh, soc_pct, *, charge_eff=0.95, discharge_eff=0.95,
                 max_charge_w=11000.0, max_discharge_w=11000.0, cells_series=_CELLS_SERIES):
        if capacity_wh <= 0:
            raise ValueError("capacity_wh must be > 0")
        if not 0.0 <= soc_pct <= 100.0:
            raise ValueError("soc_pct must be within 0..100")
        if not (0 < charge_eff <= 1 and 0 < discharge_eff <= 1):
            raise ValueError("efficiencies must be within (0, 1]")
        self.capacity_wh = float(capacity_wh)
        self.stored_wh = self.capacity_wh * soc_pct / 100.0
        self.charge_eff = charge_eff
        self.discharge_eff = discharge_eff
        self.max_charge_w = float(max_charge_w)
        self.max_discharge_w = float(max_discharge_w)
        self.cells_series = int(cells_series)
        # Terminal-side energy through this battery since it was made, Wh.
        self.charged_wh = 0.0
        self.discharged_wh = 0.0

    @property
    def soc_pct(self):
        return 100.0 * self.stored_wh / self.capacity_wh

    def ocv_v(self):
        """The pack's open-circuit voltage at the present SoC, V."""
        soc = min(100.0, max(0.0, self.soc_pct))
        for (s0, v0), (s1, v1) in zip(_CELL_OCV, _CELL_OCV[1:]):
            if soc <= s1:
                return self.cells_series * (v0 + (v1 - v0) * (soc - s0) / (s1 - s0))
        return self.cells_series * _CELL_OCV[-1][1]

    @property
    def loss_wh(self):
        """Energy lost in conversion so far (terminal energy in - out - stored gain)."""
        return self.charged_wh * (1 - self.charge_eff) + self.discharged_wh * (1 / self.discharge_eff - 1)

    def charge_limit_w(self):
        soc = self.soc_pct
        if soc <= _TAPER_HIGH_PCT:
            share = 1.0
        else:
            share = 1.0 - (1.0 - _TAPER_FLOOR) * (soc - _TAPER_HIGH_PCT) / (100.0 - _TAPER_HIGH_PCT)
        return self.max_charge_w * share

    def discharge_limit_w(self):
        soc = self.soc_pct
        if soc >= _TAPER_LOW_PCT:
            share = 1.0
        else:
            share = _TAPER_FLOOR + (1.0 - _TAPER_FLOOR) * soc / _TAPER_LOW_PCT
        return self.max_discharge_w * share

    def drive(self, trip_wh):
        """A trip's energy out of the pack (the car away). A trip that needs
        more than the pack held was charged on the road: the car comes home
        with 10 % (a driver's usual margin), or what it left with if less."""
        self.stored_wh = max(self.stored_wh - trip_wh, min(self.stored_wh, 0.1 * self.capacity_wh))

    def step(self, ev_w_request, dt_s):
        """Draw or deliver power for dt_s seconds; return the ev_w that flowed."""
        if dt_s <= 0:
            return 0.0
        hours = dt_s / 3600.0
        if ev_w_request > 0:
            headroom_w = (self.capacity_wh - self.stored_wh) / (self.charge_eff * hours)
            ev_w = min(ev_w_request, self.charge_limit_w(), headroom_w)
            self.stored_wh = min(self.capacity_wh, self.stored_wh + ev_w * self.charge_eff * hours)
            self.charged_wh += ev_w * hours
        elif ev_w_request < 0:
            available_w = self.stored_wh * self.discharge_eff / hours
            ev_w = -min(-ev_w_request, self.discharge_limit_w(), available_w)
            self.stored_wh = max(0.0, self.stored_wh + ev_w / self.discharge_eff * hours)
            self.discharged_wh += -ev_w * hours
        else:
            ev_w = 0.0
        return ev_w
