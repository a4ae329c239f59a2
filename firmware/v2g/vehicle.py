# The vehicle-session interface: what the controller reads from a car's
# charging session and what it calls on it. CHAdeMO (v2g.chademo) implements
# it today and the GB/T session will; the guard and the control loop see only
# this, and the tests' fake cars subclass it.
#
# Ownership: a session belongs to the control thread. It is ticked exactly
# once per control tick, and every attribute below changes only inside
# tick() (start/stop/set_measured only record a wish or a value that the
# next tick() acts on), so everything the guard reads in one tick comes from
# one evaluation. Other threads never touch it: they see the control loop's
# published status record.
#
# Timing is physical: now_ms comes from the real ticks clock (v2g.clock.Clock),
# never a warped one, since the car's timeouts are in real milliseconds.

SOC_NONE = None  # soc_source while the car has not given a SoC
# State names every session uses for "no session going on" (plus its own
# names for the phases in between): a clean stop waits for one of these.
ENDED_STATES = ("idle", "stopped", "fault")


class VehicleSession:
    """Declared interface of one vehicle session (charger side).

    Read by the guard and the control loop after tick():
      plugged            a car is talking on this connector (a session exists)
      state              session state name ("idle" when no car); the guard
                         holds with reason "vehicle_" + state while must_stop
      soc_cpct           the car's SoC in 0.01 %, or None (not valid yet)
      soc_res_cpct       resolution of that SoC reading (0.01 %)
      soc_source         where soc_cpct comes from (e.g. "chademo_102"), or None
      soc_age_ms         ms since the car last sent its status, or None
      charge_limit_w     what the car accepts now (W, >= 0); 0 outside the loop
      discharge_limit_w  what the car gives now (W, >= 0); 0 without V2G
      must_stop          True: command 0 W within this control period
      fault              None or a short code ("can_timeout", "ev_overvoltage")

    Called by the control loop:
      tick(now_ms, ev_w_request)  once per control tick: take the car's
                         frames, make at most one state transition, send the
                         frames that are due. ev_w_request: what the
                         controller asks for (+ into the car, W) before the
                         car's limits; it sets the direction.
      stop(reason)       the charger ends the session (departure reached, the
                         owner, a controller fault, shutdown): current to 0,
                         then the car opens its contactors. Until start(),
                         no new power.
      start()            the charger is willing again (undoes stop()); a
                         session that already ended stays ended until the
                         car starts a new one.
      set_measured(now_ms, ev_w, dc_v=None, dc_a=None)
                         what the power stage measures, once per tick: ev_w
                         the power into the car (W, - out of it; 701 W, or
                         714 DCW), dc_v / dc_a the DC side's voltage and
                         current (+ into the car) when the inverter has
                         SunSpec 714, else None. Reported to the car as its
                         present output (CHAdeMO 0x109): the measured DC
                         voltage, else the car's own voltage report; the
                         measured DC current, else ev_w / that voltage.
      snapshot()         diagnostics for the technician (allocates).
    """

    def __init__(self):
        self.plugged = False
        self.state = "idle"
        self.soc_cpct = None
        self.soc_res_cpct = 100
        self.soc_source = SOC_NONE
        self.soc_age_ms = None
        self.charge_limit_w = 0
        self.discharge_limit_w = 0
        self.must_stop = True
        self.fault = None

    def ended(self):
        """No session is going on (none started, or it is over)."""
        return not self.plugged or self.state in ENDED_STATES

    def tick(self, now_ms, ev_w_request):
        raise NotImplementedError

    def stop(self, reason):
        raise NotImplementedError

    def start(self):
        raise NotImplementedError

    def set_measured(self, now_ms, ev_w, dc_v=None, dc_a=None):
        raise NotImplementedError

    def snapshot(self):
        return {"state": self.state, "plugged": self.plugged, "fault": self.fault,
                "soc_cpct": self.soc_cpct, "soc_source": self.soc_source,
                "soc_age_ms": self.soc_age_ms, "must_stop": self.must_stop,
                "charge_limit_w": self.charge_limit_w,
                "discharge_limit_w": self.discharge_limit_w}
