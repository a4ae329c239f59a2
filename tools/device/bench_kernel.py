# `make bench` kernel: the viper control kernel against its bytecode twin (the
# very same source with the viper decorator removed), ns per tick, and the
# heap bytes a viper tick allocates. One JSON line.
#
#     micropython tools/device/bench_kernel.py firmware/v2g/kernel.py
import gc
import json
import sys
import time

from v2g import kernel as K

src = open(sys.argv[1]).read().replace("@micropython.viper\n", "")
twin = {}
exec(src, twin)


def setup(mod_new_state):
    s = mod_new_state()
    s[K.LO_W] = -7000
    s[K.HI_W] = 7000
    s[K.RAMP_W] = 40
    s[K.NOM_MHZ] = 50000
    s[K.DB_MHZ] = 200
    s[K.K_W_PER_HZ] = 2800
    s[K.FREQ_EN] = 1
    return s


def loop(tick, s, n):
    # CALLS ticks per pass: a viper tick costs less than the pass's own
    # bytecode, and one call per pass left it inside that cost's noise
    # (a negative time once, a 20,000x "speedup")
    i = 0
    while i < n:
        s[K.REQ_W] = 7000 if (i >> 9) & 1 else -7000
        s[K.HZ_MHZ] = 49000 + (i & 2047)
        tick(s)
        tick(s)
        tick(s)
        tick(s)
        tick(s)
        tick(s)
        tick(s)
        tick(s)
        i += 1


CALLS = 8


def empty(tick, s, n):
    # the loop's own cost, subtracted from both
    i = 0
    while i < n:
        s[K.REQ_W] = 7000 if (i >> 9) & 1 else -7000
        s[K.HZ_MHZ] = 49000 + (i & 2047)
        i += 1


def timed(fn, tick, s, n):
    best = None
    for _ in range(9):
        t = time.ticks_us()
        fn(tick, s, n)
        dt = time.ticks_diff(time.ticks_us(), t)
        best = dt if best is None or dt < best else best
    return best


N = 20000
sv = setup(K.new_state)
sb = setup(twin["new_state"])
# same inputs give the same outputs: the twin really is the same kernel
loop(K.tick, sv, 3000)
loop(twin["tick"], sb, 3000)
assert list(sv) == list(sb), (list(sv), list(sb))
base = timed(empty, None, sv, N)
viper_us = timed(loop, K.tick, sv, N) - base
byte_us = timed(loop, twin["tick"], sb, N) - base
if viper_us <= 0:
    raise SystemExit("bench_kernel: the viper ticks took no measurable time over the loop (%d us)" % viper_us)
gc.collect()
gc.disable()
a0 = gc.mem_alloc()
loop(K.tick, sv, N)
alloc = gc.mem_alloc() - a0
gc.enable()
ticks = N * CALLS
print(json.dumps({"kernel_viper_ns_per_tick": viper_us * 1000 // ticks,
                  "kernel_bytecode_ns_per_tick": byte_us * 1000 // ticks,
                  "kernel_speedup_viper_vs_bytecode": round(byte_us / viper_us, 1),
                  "kernel_alloc_bytes_per_tick": alloc / ticks}))
