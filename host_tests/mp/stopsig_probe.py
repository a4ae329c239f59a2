# StopSignals on the unix port. argv: "live" (the real /proc/self/status:
# prints enabled, then waits up to 10 s for a stop signal) or a status file
# to read (prints enabled and pending).
import sys
import time

from v2g.hal.stopsig import StopSignals

if sys.argv[1] == "live":
    s = StopSignals()
    print("enabled", s.enabled)
    t0 = time.ticks_ms()
    while time.ticks_diff(time.ticks_ms(), t0) < 10000:
        if s.pending():
            print("stop seen")
            break
        time.sleep_ms(10)
    print("pending", s.pending())
else:
    s = StopSignals(sys.argv[1])
    print("enabled", s.enabled, "pending", s.pending())
