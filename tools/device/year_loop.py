# `make year`'s MicroPython half: the firmware's own Controller (guard, plan,
# settings, kernel, the request priority and the plug-in replan) stepped
# through simulated time, one tick per STEP_S, against the simulator's EV
# battery (tools/sim/battery.py, the class `make sim` uses) behind an
# in-process inverter. What it leaves out is the per-tick Modbus and MQTT:
# the inverter here is an object, the cloud nobody.
#
# usage: micropython year_loop.py SITE_JSON TRIPS_JSON OUT_TRACE STEP_S
#        micropython year_loop.py SITE_JSON --config   (the validated config as JSON)
#   TRIPS_JSON: {"start_s": unix s, "days": n, "soc_pct": start SoC,
#                "away": [[leave_s, back_s, trip_wh], ...] in time order}
#   OUT_TRACE: one record per tick, 3 int32: SoC in 0.01 %, ev_w, plugged
# prints "month N" at each simulated month, then one JSON line of totals.
import array
import json
import sys

from v2g import config, log
from v2g.clock import Clock
from v2g.control import Controller
from tools.sim.battery import EvBattery

log.quiet = True


class SteppedClock(Clock):
    """Simulated time that moves only when the loop says so."""

    def __init__(self, start_s):
        self.ms = start_s * 1000

    def ticks_ms(self):
        return self.ms & 0x3FFFFFFF  # wraps as a board's ticks do (every 12.4 days)

    def ticks_diff(self, a, b):
        d = (a - b) & 0x3FFFFFFF
        return d - 0x40000000 if d & 0x20000000 else d

    def ticks_add(self, a, b):
        return (a + b) & 0x3FFFFFFF

    def _raw_s(self):
        return self.ms // 1000

    def sleep_ms(self, ms):
        pass


class BatteryInverter:
    """The southbound interface (v2g.southbound) over an EvBattery: the
    setpoint flows for the next STEP_S, as far as the battery accepts it.
    Without a car (away) the 713 SoC is not implemented and no power flows,
    as the Modbus simulator reports it."""

    ready = True
    inverter_droop = False
    models = {1: (0, 66), 701: (0, 153), 704: (0, 65), 713: (0, 7)}
    info = {}
    base = 40000

    def __init__(self, battery, step_s):
        self.battery = battery
        self.step_s = step_s
        self.plugged = True
        self.ev_w = 0
        self.wh_in = 0.0
        self.wh_out = 0.0
        self.last_wset = 0  # EV sign, as the controller asks (southbound reads it)

    def discover(self):
        self.ready = True

    def soc_resolution_cpct(self):
        return 1

    def refresh(self, m, tick):
        m.plugged = self.plugged
        m.soc_cpct = int(self.battery.soc_pct * 100 + 0.5) if self.plugged else None
        m.inv_soc_cpct = m.soc_cpct
        m.soc_res_cpct = 1
        m.soc_tick = m.ev_tick = m.hz_tick = tick
        m.ev_w = self.ev_w
        m.hz_mhz = 50000
        m.wh_in = int(self.wh_in)
        m.wh_out = int(self.wh_out)
        m.inv_fault = None
        return True

    def write_setpoint(self, ev_w):
        self.last_wset = ev_w

    def heartbeat(self, n):
        pass

    def flow(self):
        """The last setpoint for one step: -> the ev_w that flowed."""
        w = self.battery.step(self.last_wset, self.step_s) if self.plugged else 0.0
        self.ev_w = int(w)
        h = self.step_s / 3600
        if w > 0:
            self.wh_in += w * h
        else:
            self.wh_out -= w * h
        return w


def main():
    try:
        cfg = config.load(sys.argv[1])
    except config.ConfigError as e:
        print("config error: " + e.path + ": " + e.rule)
        sys.exit(2)
    if sys.argv[2] == "--config":
        print(json.dumps(cfg))
        return
    with open(sys.argv[2]) as f:
        trips = json.load(f)
    out_path = sys.argv[3]
    step_s = int(sys.argv[4])
    # A tick per step. The validator bounds the period for a real loop
    # (50..5000 ms); here a tick stands for step_s of simulated time, and
    # the plan is recomputed every 15 min (and on a 1 % drift, a plug-in or
    # a new setting) instead of every replan_s, or the year would spend
    # its time re-planning.
    cfg["control"]["period_ms"] = step_s * 1000
    cfg["plan"]["replan_s"] = max(cfg["plan"]["replan_s"], 900)
    # the car make sim simulates: EvBattery's own efficiencies behind the
    # simulated inverter's 11 kW ratings (tools/sim/inverter_main.py)
    battery = EvBattery(cfg["battery"]["capacity_wh"], trips["soc_pct"], max_charge_w=11000.0,
                        max_discharge_w=11000.0)
    inv = BatteryInverter(battery, step_s)
    start_s = trips["start_s"]
    clock = SteppedClock(start_s)
    ctrl = Controller(cfg, clock, inv)
    away = trips["away"]
    n_ticks = trips["days"] * 86400 // step_s
    trace = array.array("i", bytes(12 * 1024))  # 1,024 ticks per write
    ai = 0  # next trip in `away`
    leave_s = back_s = None
    trip_wh = 0
    month = -1
    f = open(out_path, "wb")
    j = 0
    for i in range(n_ticks):
        now_s = start_s + i * step_s
        # the car comes and goes between ticks, as a driver would
        if back_s is not None and now_s >= back_s:
            battery.drive(trip_wh)
            inv.plugged = True
            back_s = None
        if back_s is None and ai < len(away) and now_s >= away[ai][0]:
            leave_s, back_s, trip_wh = away[ai]
            ai += 1
            inv.plugged = False
        clock.ms = now_s * 1000
        ctrl.tick()
        inv.flow()
        trace[j] = int(battery.soc_pct * 100 + 0.5)
        trace[j + 1] = inv.ev_w
        trace[j + 2] = 1 if inv.plugged else 0
        j += 3
        if j == len(trace):
            f.write(trace)
            j = 0
        m = i * step_s // (86400 * 365 // 12)
        if m != month:
            month = m
            print("month", month + 1)
        ctrl.shared.events.take()  # nobody reads them here: keep the box from churning
    if j:
        f.write(memoryview(trace)[:j])
    f.close()
    print(json.dumps({"ticks": n_ticks, "wh_in": inv.wh_in, "wh_out": inv.wh_out,
                      "internal_errors": ctrl.internal_errors, "soc_pct": battery.soc_pct}))


main()
