"""CAN benchmark: the firmware's SLCAN parser + CHAdeMO decoder on the unix port.

The car's frames of the real Nissan Leaf capture, as the SLCAN lines an
adapter would deliver, are fed from memory to v2g.can.slcan.SlcanBus (the
stream copies preallocated 512-byte chunks, so it allocates nothing itself)
and every frame goes through v2g.chademo.decode(). Measured in the same run:

    can_frames_per_s_decoded          frames parsed + decoded per second
    can_decode_vs_bus_rate            that / 4,000 (a 500 kbit/s bus full of
                                      8-byte frames): the headroom
    can_alloc_bytes_per_frame         heap bytes allocated per frame (target 0)
    can_slcan_speedup_viper_vs_bytecode
                                      the same parser source with the viper
                                      decorators removed, run as bytecode

    build/venv/bin/python -m tools.bench_can
"""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / "build" / "venv" / "bin" / "micropython"
BUS_FRAMES_PER_S = 4000  # 500 kbit/s, 8-byte standard frames with stuffing: ~125 bits each

BENCH = r"""
import gc, json, sys, time
from v2g.can import Frame
from v2g.chademo import EvData, decode
import v2g.can.slcan as slcan

text = open(sys.argv[1], "rb").read()
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
""".replace("BUS_RATE", str(BUS_FRAMES_PER_S))


def slcan_text():
    """The capture's vehicle frames as adapter lines (with a timestamp on
    every fourth, as adapters do after "Z1"), as bytes."""
    from tools.sim.vehicle import vehicle_frames

    out = []
    for i, (t, cid, data) in enumerate(vehicle_frames()):
        line = "t%03X%d%s" % (cid, len(data), data.hex().upper())
        if i % 4 == 3:
            line += "%04X" % (int(t * 1000) % 60000)
        out.append(line + "\r")
    return "".join(out).encode()


def run(results):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "frames.slcan"
        p.write_bytes(slcan_text())
        env = dict(os.environ)
        env["MICROPYPATH"] = f"{ROOT / 'firmware'}:{ROOT / 'build' / 'lib'}:.frozen"
        res = subprocess.run([str(MICROPYTHON), "-c", BENCH, str(p),
                              str(ROOT / "firmware" / "v2g" / "can" / "slcan.py")],
                             capture_output=True, text=True, env=env, timeout=300, cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"micropython failed:\n{res.stdout}\n{res.stderr}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if got.pop("can_bench_bad"):
        raise RuntimeError("the capture did not parse/decode cleanly")
    got.pop("can_bench_last_soc")
    results.update(got)
    return results


def main():
    results = run({})
    for k, v in results.items():
        print(f"  {k:45s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
