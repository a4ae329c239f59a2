# The charger session on a real SLCAN link against tools/sim/vehicle.py, for
# test_chademo.py: ticked every 10 ms as the control loop ticks it, with a
# power stage that follows the car's limit at 375 V and ramps.
#
#   micropython host_tests/mp/chademo_fw_session.py LINK RUN_MS REQ_W [STOP_AFTER_MS [START_AFTER_MS]]
#
# LINK is "slcan:PATH" or "slcan-tcp:HOST:PORT". STOP_AFTER_MS > 0: after
# that long in charging, stop("owner"); START_AFTER_MS: once a later
# session has waited that long in handshake, start(). Prints one JSON line.
import json
import sys
import time

from v2g import log
from v2g.chademo import ChademoSession
from v2g.clock import Clock
from v2g.config import parse_link
from v2g.hal.can_build import vehicle_bus

log.quiet = True
link = sys.argv[1]
run_ms = int(sys.argv[2])
req_w = int(sys.argv[3])
stop_after_ms = int(sys.argv[4]) if len(sys.argv) > 4 else 0
start_after_ms = int(sys.argv[5]) if len(sys.argv) > 5 else 0
bus = vehicle_bus({"vehicle": {"link_parsed": parse_link("vehicle.link", link)}}, {})  # as app.build makes it
s = ChademoSession(bus, Clock(), 500, 15)
t0 = time.ticks_ms()
states = []
amps = 0
since = None  # entry into the current state, ms after t0
stopped_by_us = False
started = False
while time.ticks_diff(time.ticks_ms(), t0) < run_ms:
    now = time.ticks_ms()
    # the power stage: towards the car's limit at 375 V while charging,
    # else to 0; 1 A per tick. DC measured while the battery is on it.
    want = min(14, s.charge_limit_w // 375) if s.state == "charging" else 0
    amps = min(want, amps + 1) if want > amps else max(want, amps - 1)
    on = s.state in ("ready", "charging", "discharging", "stopping")
    s.set_measured(now, 375 * amps, 375 if on else None, amps)
    s.tick(now, req_w)
    el = time.ticks_diff(now, t0)
    if not states or states[-1] != s.state:
        states.append(s.state)
        since = el
    if stop_after_ms and not stopped_by_us and s.state == "charging" and el - since >= stop_after_ms:
        s.stop("owner")
        stopped_by_us = True
    if (start_after_ms and stopped_by_us and not started and s.sessions > 1 and s.state == "handshake"
            and el - since >= start_after_ms):
        s.start()
        started = True
    time.sleep_ms(10)
print(json.dumps({"states": states, "snap": s.snapshot(), "errors": bus.errors, "started": started}))
