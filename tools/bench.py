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
    threads_violations, threads_snapshots_per_tick, threads_actions_unapplied, ...
                                       2 min of the control thread beside a cloud-like and two
                                       REPL-helper threads on its status record and inbox
                                       (tools/bench_threads.py)
    stopsig_failed_{handler,polled}    two allocating threads stopped by SIGINT at random:
                                       the port's handler vs the firmware's polled set
                                       (tools/bench_stopsig.py)

    make bench               all of them (several minutes: the heap search runs
                             a simulated day per probe)
    python -m tools.bench kernel refresh    only those
"""
import json
import subprocess
import sys

from tools import children, device
from tools.harness import MICROPYTHON, ROOT, InverterProcess, mp_env

OUT = ROOT / "build" / "bench" / "results.json"


def run_mpy(name, args=(), timeout=300):
    """Run the program tools/device/<name>.py on the unix port with the
    firmware on its path -> its last output line, parsed as JSON."""
    res = subprocess.run([MICROPYTHON, str(device.path(name)), *map(str, args)], capture_output=True, text=True,
                         env=mp_env(), timeout=timeout, cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"micropython failed:\n{res.stdout}\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def bench_kernel(results):
    results.update(run_mpy("bench_kernel", [ROOT / "firmware" / "v2g" / "kernel.py"]))


def bench_refresh(results):
    inv = InverterProcess(["--pct-sf", -2])
    try:
        results.update(run_mpy("bench_refresh", [inv.port]))
    finally:
        inv.stop()


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


def bench_stopsig(results):
    from tools import bench_stopsig

    bench_stopsig.run(results)


def bench_threads(results):
    from tools import bench_threads

    bench_threads.run(results)


BENCHES = [bench_kernel, bench_refresh, bench_modbus, bench_can, bench_jitter, bench_drain, bench_heap, bench_heap32,
           bench_soak, bench_threads, bench_stopsig]


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
