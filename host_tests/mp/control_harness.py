# Drives the real Controller tick by tick for host tests (runs on the unix
# port). stdin: "tick N" | "cmd NAME [ARG]" | "quit"; one JSON line per tick.
# It uses the controller as the other threads do: actions go into the
# shared inbox (a "cmd" is applied by the one tick it runs), rows come from
# the published status record.
import json
import sys
import time

from v2g import app, clock as clockmod, log

cfg, board = app.load(sys.argv[1], sys.argv[2])
clk = clockmod.from_env()
log.set_clock(clk)
log.quiet = True
ctrl = app.build(cfg, board, clk)
shared = ctrl.shared
print(json.dumps({"ready": True}))


def row(ms):
    r = shared.read()
    return {"n": r["tick_no"], "mode": r["mode"], "reason": r["reason"], "fault": r["fault"],
            "sp": r["setpoint_w"], "link": r["link_ok"], "soc": r["soc_cpct"], "errors": r["link_errors"],
            "ms": ms}


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
        box = []
        assert shared.post(tuple([words[1]] + [float(a) for a in words[2:]] + [box]))
        t0 = time.ticks_ms()
        ctrl.run(stop_after_ticks=1)
        ok, ret = box[0]
        print(json.dumps({"cmd": words[1], "ok": ok, "ret": ret if ok else repr(ret),
                          "row": row(time.ticks_diff(time.ticks_ms(), t0))}))
        continue
    if words[0] == "tick":
        for _ in range(int(words[1])):
            t0 = time.ticks_ms()
            ctrl.run(stop_after_ticks=1)
            print(json.dumps(row(time.ticks_diff(time.ticks_ms(), t0))))
