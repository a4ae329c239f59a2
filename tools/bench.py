"""`make bench`: performance figures, each with its comparison measured in the
same run, written to build/bench/results.json (one flat object of numbers).

    kernel_speedup_viper_vs_bytecode   same kernel source, viper vs bytecode
    kernel_alloc_bytes_per_tick        heap bytes allocated per viper tick
    refresh_transactions               Modbus transactions per telemetry refresh
    refresh_bytes_vs_minimum           bytes on the wire per refresh / minimum
    modbus_cpu_ratio_vs_umodbus        this master vs micropython-modbus (CPU)
    can_frames_per_s_decoded, can_alloc_bytes_per_frame   SLCAN + CHAdeMO decode
    tick_jitter_{p50,p99,max}_ms_{broker_up,broker_down,broker_hanging,tls_connect}
    outbox_drain_records_per_s         telemetry delivered per second after an outage
    min_heap_kb_plain, min_heap_kb_tls smallest -X heapsize that runs a simulated day
                                       (.mpy files on the filesystem: stock firmware)
    min_heap_kb_plain_romfs, min_heap_kb_tls_romfs   the same from a ROMFS image
                                       (heap beyond the image, which a board keeps in flash)
    code_ram_kb_32bit / _64bit         the loaded modules on a 32-bit (wasm) and this port
    soak_failed_checks, soak_worst_refresh_gap_{s,vs_revert,real_ms}   shortened
                                       days back to back beside CPU hogs (tools/bench_soak.py)

    make bench               all of them (several minutes: the heap search runs
                             a simulated day per probe)
    python -m tools.bench kernel refresh    only those
"""
import json
import os
import subprocess
import sys
from pathlib import Path

from tools import children

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / "build" / "venv" / "bin" / "micropython"
VENV_PY = ROOT / "build" / "venv" / "bin" / "python"
OUT = ROOT / "build" / "bench" / "results.json"


def run_mpy(code, args=(), timeout=300):
    env = dict(os.environ)
    env["MICROPYPATH"] = f"{ROOT / 'firmware'}:{ROOT / 'build' / 'lib'}:.frozen"
    res = subprocess.run([str(MICROPYTHON), "-c", code, *args], capture_output=True, text=True,
                         env=env, timeout=timeout, cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"micropython failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


KERNEL_BENCH = r"""
import gc, json, sys, time
from v2g import kernel as K

# The bytecode twin: the very same source with the viper decorator removed.
src = open(sys.argv[1]).read().replace("@micropython.viper\n", "")
twin = {}
exec(src, twin)

def setup(mod_new_state):
    s = mod_new_state()
    s[K.LO_W] = -7000; s[K.HI_W] = 7000; s[K.RAMP_W] = 40
    s[K.NOM_MHZ] = 50000; s[K.DB_MHZ] = 200; s[K.K_W_PER_HZ] = 2800; s[K.FREQ_EN] = 1
    return s

def loop(tick, s, n):
    i = 0
    while i < n:
        s[K.REQ_W] = 7000 if (i >> 9) & 1 else -7000
        s[K.HZ_MHZ] = 49000 + (i & 2047)
        tick(s)
        i += 1

def empty(tick, s, n):
    # the loop's own cost, subtracted from both
    i = 0
    while i < n:
        s[K.REQ_W] = 7000 if (i >> 9) & 1 else -7000
        s[K.HZ_MHZ] = 49000 + (i & 2047)
        i += 1

def timed(fn, tick, s, n):
    best = None
    for _ in range(5):
        t = time.ticks_us()
        fn(tick, s, n)
        dt = time.ticks_diff(time.ticks_us(), t)
        best = dt if best is None or dt < best else best
    return best

N = 20000
sv = setup(K.new_state)
sb = setup(twin["new_state"])
# same inputs give the same outputs: the twin really is the same kernel
loop(K.tick, sv, 3000); loop(twin["tick"], sb, 3000)
assert list(sv) == list(sb), (list(sv), list(sb))
base = timed(empty, None, sv, N)
viper_us = timed(loop, K.tick, sv, N) - base
byte_us = timed(loop, twin["tick"], sb, N) - base
gc.collect(); gc.disable()
a0 = gc.mem_alloc()
loop(K.tick, sv, N)
alloc = gc.mem_alloc() - a0
gc.enable()
print(json.dumps({"kernel_viper_ns_per_tick": viper_us * 1000 // N,
                  "kernel_bytecode_ns_per_tick": byte_us * 1000 // N,
                  "kernel_speedup_viper_vs_bytecode": round(byte_us / max(1, viper_us), 1),
                  "kernel_alloc_bytes_per_tick": alloc / N}))
"""

REFRESH_BENCH = r"""
import json, sys
from v2g.hal.tcpstream import TcpStream
from v2g.modbus import RtuMaster
from v2g.meas import Meas
from v2g.sunspec import SunSpecInverter
port = int(sys.argv[1])
m = RtuMaster(TcpStream("127.0.0.1", port), 1)
inv = SunSpecInverter(m)
inv.discover()
meas = Meas()
inv.refresh(meas, 1)  # warm
N = 200
t0, b0 = m.transactions, m.tx_bytes + m.rx_bytes
for i in range(N):
    inv.refresh(meas, i)
tr = (m.transactions - t0) / N
by = (m.tx_bytes + m.rx_bytes - b0) / N
# minimum: one request (8 bytes) and one response (5 + 2 per register) per
# model block, carrying only the registers the controller uses
minimum = sum(8 + 5 + 2 * used for span, used in inv.needed_registers())
print(json.dumps({"refresh_transactions": tr, "refresh_bytes": by, "refresh_bytes_minimum": minimum,
                  "refresh_bytes_vs_minimum": round(by / minimum, 3),
                  "refresh_soc_pct": meas.soc_cpct / 100}))
"""


def bench_kernel(results):
    results.update(run_mpy(KERNEL_BENCH, [str(ROOT / "firmware" / "v2g" / "kernel.py")]))


def bench_refresh(results):
    proc = children.spawn([str(VENV_PY), "-m", "tools.sim.inverter_main", "--port", "0", "--pct-sf", "-2"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=str(ROOT))
    try:
        line = proc.stdout.readline()
        port = int(line.split("=")[1])
        results.update(run_mpy(REFRESH_BENCH, [str(port)]))
    finally:
        children.end(proc)


def bench_modbus(results):
    from tools import bench_modbus

    bench_modbus.run(results)


def bench_can(results):
    from tools import bench_can

    bench_can.run(results)


def bench_jitter(results):
    from tools import bench_cloud

    bench_cloud.jitter(results)


def bench_drain(results):
    from tools import bench_cloud

    bench_cloud.drain(results)


def bench_heap(results):
    from tools import bench_cloud

    bench_cloud.heap(results, lo=64, hi=320)


def bench_heap32(results):
    from tools import bench_heap32

    bench_heap32.run(results)


def bench_soak(results):
    from tools import bench_soak

    bench_soak.run(results)


BENCHES = [bench_kernel, bench_refresh, bench_modbus, bench_can, bench_jitter, bench_drain, bench_heap, bench_heap32,
           bench_soak]


def main():
    children.exit_on_signals()  # SIGTERM ends the children too (tools/children.py)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    results = {}
    if OUT.exists():
        # later issues add benches to this file; keep the figures of the others
        try:
            results = json.loads(OUT.read_text())
        except ValueError:
            results = {}
    only = set(sys.argv[1:])
    for bench in BENCHES:
        name = bench.__name__.replace("bench_", "")
        if only and name not in only:
            continue
        print(f"bench: {name} ...", flush=True)
        got = {}
        bench(got)
        for k, v in got.items():
            print(f"  {k:45s} {v}")
        results.update(got)
    OUT.write_text(json.dumps(results, indent=2, sort_keys=True))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
