# `make bench` can: the firmware's SLCAN parser + CHAdeMO decoder on frames
# of adapter lines (FRAMES, a file) handed out from memory in preallocated
# chunks (the stream allocates nothing itself); frames per second, that
# against BUS_RATE frames per second, heap bytes per frame, and the same
# parser source (SLCAN_PY) with the viper decorators removed, run as
# bytecode. One JSON line.
#
#     micropython tools/device/bench_can.py FRAMES firmware/v2g/can/slcan.py BUS_RATE
import gc
import json
import sys
import time

import v2g.can.slcan as slcan
from v2g.can import Frame
from v2g.chademo import EvData, decode

text = open(sys.argv[1], "rb").read()
BUS_RATE = int(sys.argv[3])
CHUNK = 512


class MemStream:
    # Hands out the text in preallocated chunks, round and round.
    def __init__(self, data):
        mv = memoryview(data)
        self.chunks = [mv[i:i + CHUNK] for i in range(0, len(data), CHUNK)]
        self.lens = [len(c) for c in self.chunks]
        self.i = 0

    def readinto(self, mv):
        i = self.i
        n = self.lens[i]
        mv[0:n] = self.chunks[i]
        self.i = (i + 1) % len(self.chunks)
        return n

    def write(self, mv):
        return len(mv)

    def reopen(self):
        pass

    def close(self):
        pass


def run(mod, n):
    bus = mod.SlcanBus(MemStream(text))
    f = Frame()
    ev = EvData()
    for _ in range(200):  # warm-up
        bus.recv_into(f)
    gc.collect()
    gc.disable()
    a0 = gc.mem_alloc()
    t0 = time.ticks_us()
    k = 0
    bad = 0
    while k < n:
        if bus.recv_into(f):
            if decode(f.id, f.data, f.dlc, ev) != 1:
                bad += 1
            k += 1
    dt = time.ticks_diff(time.ticks_us(), t0)
    alloc = gc.mem_alloc() - a0
    gc.enable()
    return dt, alloc, bad, bus.errors, ev.soc_raw


N = 40000
dt, alloc, bad, errors, soc = run(slcan, N)
# the bytecode twin: the same source without the viper decorators
src = open(sys.argv[2]).read().replace("@micropython.viper\n", "")
twin = {"__name__": "slcan_twin"}
exec(src, twin)


class Twin:
    SlcanBus = twin["SlcanBus"]


dt2, _, _, _, _ = run(Twin, N // 4)
print(json.dumps({
    "can_frames_per_s_decoded": int(N * 1000000 // dt),
    "can_decode_vs_bus_rate": round(N * 1000000 / dt / BUS_RATE, 1),
    "can_alloc_bytes_per_frame": alloc / N,
    "can_slcan_speedup_viper_vs_bytecode": round((dt2 * 4) / dt, 2),
    "can_bench_bad": bad + errors, "can_bench_last_soc": soc}))
