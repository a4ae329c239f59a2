# Drives the real Controller tick by tick for host tests (runs on the unix
# port). stdin: "tick N" | "cmd NAME [ARG]" | "quit"; one JSON line per tick.
import json
import sys
import time

from v2g import app, clock as clockmod, log

cfg, board = app.load(sys.argv[1], sys.argv[2])
clk = clockmod.from_env()
log.set_clock(clk)
log.quiet = True
ctrl = app.build(cfg, board, clk)
print(json.dumps({"ready": True}))
while True:
    line = sys.stdin.readline()
    if not line:
        break
    words = line.split()
    if not words:
        continue
    if words[0] == "quit":
        break
    if words[0] == "cmd":
        fn = getattr(ctrl.guard, words[1])
        print(json.dumps({"cmd": words[1], "ret": fn(*[float(a) for a in words[2:]])}))
        continue
    if words[0] == "tick":
        for _ in range(int(words[1])):
            t0 = time.ticks_ms()
            ctrl.run(stop_after_ticks=1)
            g = ctrl.guard
            print(json.dumps({"n": ctrl.tick_no, "mode": ctrl.mode, "reason": ctrl.reason, "fault": g.fault,
                              "sp": ctrl.k[10], "link": ctrl.link_ok, "soc": g.soc_cpct,
                              "errors": ctrl.link_errors, "ms": time.ticks_diff(time.ticks_ms(), t0)}))
