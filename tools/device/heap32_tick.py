# `make bench heap32` (tools/bench_heap32.py): what a control tick
# allocates, on 32-bit (where a unix time does not fit a small int - 31 bits:
# 2**30 s is in 2004 - so every clock.time() is a heap allocation) and on
# 64-bit. A board-like clock (ticks advanced one period per tick, the wall
# clock with them, from a fixed instant so that runs compare: the plan's
# tariff periods depend on the hour) and an inverter stub that reads fixed
# values; gc disabled, so mem_alloc's growth is every byte allocated. Ten
# minutes of 200 ms ticks, with a replan every 60 s as the firmware does.
# ARGS: the site config's path. Prints one "RESULT {json}" line.
#
#     micropython tools/device/heap32_tick.py CONFIG
try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = sys.argv[1]
import gc, json, time
from v2g import config, log
log.quiet = True
from v2g.clock import Clock
from v2g.control import Controller

class BoardClock(Clock):
    # the wall clock moves with the ticks (no jumps); a unix time as a board's
    # RTC gives it: a big int on 32-bit
    ms = 0
    t0 = 1781452800  # 2026-06-14 16:00 UTC: a weekday afternoon, the tariff's shoulder
    def _raw_s(self):
        return self.t0 + self.ms // 1000
    def ticks_ms(self):
        return self.ms
    def ticks_diff(self, a, b):
        return a - b

class FixedInverter:
    models = {}
    ready = True
    inverter_droop = False
    last_wset = None
    def refresh(self, m, tick):
        m.soc_cpct = 5000
        m.soc_tick = m.ev_tick = m.hz_tick = tick
        m.ev_w = self.last_wset or 0
        m.hz_mhz = 50000
        m.inv_fault = None
    def write_setpoint(self, w):
        self.last_wset = w
    def heartbeat(self, n):
        pass

cfg = config.load(ARGS)
clk = BoardClock()
c = Controller(cfg, clk, FixedInverter())
n = 3000
for i in range(50):  # settle: first plan, first mode change
    clk.ms += c.period_ms
    c.tick()
c.shared.events.take()
while c.shared.telemetry.pop():
    pass
gc.collect()
gc.disable()
reads0 = clk.wall_reads
a0 = gc.mem_alloc()
i = 0
while i < n:
    clk.ms += c.period_ms
    c.tick()
    i += 1
tick_bytes = gc.mem_alloc() - a0
reads = clk.wall_reads - reads0
a0 = gc.mem_alloc()
t = clk.time()
time_bytes = gc.mem_alloc() - a0
gc.enable()
print('RESULT ' + json.dumps({'ticks': n, 'tick_bytes': tick_bytes, 'wall_reads': reads, 'time_bytes': time_bytes}))
