# tools/bench_modbus: the timed loop both Modbus masters run through
# (bench_modbus_ours.py, bench_modbus_umodbus.py), with the CPU time of this
# process from the scheduler around the loop only.
import json
import time


def cpu_ns():
    # nanoseconds on CPU of this process, None where /proc has no schedstat
    try:
        with open("/proc/self/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError):
        return None


def timed(read, first4, n):
    # n reads after a warm-up; prints one JSON line: cpu_us, wall_us, the
    # first four registers of the last read, n
    for _ in range(50):  # warm-up: connect, caches, first allocations
        regs = read()
    c0 = cpu_ns()
    t0 = time.ticks_us()
    for _ in range(n):
        regs = read()
    wall_us = time.ticks_diff(time.ticks_us(), t0)
    c1 = cpu_ns()
    cpu_us = (c1 - c0) // 1000 if c0 is not None else wall_us
    print(json.dumps({"cpu_us": cpu_us, "wall_us": wall_us, "regs": first4(regs), "n": n}))
