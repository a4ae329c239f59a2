"""Modbus master benchmark: firmware/v2g/modbus.py vs micropython-modbus.

Both masters run on the MicroPython unix port and read the same 50 holding
registers 1,000 times from the same pymodbus RTU-over-TCP server, which runs in
its own process so that its CPU time is not counted. Each master's CPU time is
read inside MicroPython from /proc/self/schedstat (nanoseconds on CPU) around
the timed loop only; wall time (time.ticks_us) is reported too.

Each master is timed through its own read API: micropython-modbus returns a
tuple of ints, ours a memoryview of the register bytes (callers decode only the
fields they need). So that the headline ratio does not hide that difference, a
second figure times ours with every register unpacked too (one
struct.unpack_from of all 50, which on the unix port costs about as much as
the whole read).

micropython-modbus's RTU class builds machine.UART itself; tools/bench_shims/
machine.py gives it a UART that is a TCP socket (only on the bench's
MICROPYPATH). The shim's own cost is counted against micropython-modbus, just as
TcpStream's is counted against ours.

    build/venv/bin/python -m tools.bench_modbus            # prints the figures
    build/venv/bin/python -m tools.bench_modbus --serve PORT   # server only
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools import children, device

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / "build" / "venv" / "bin" / "micropython"
SHIMS = ROOT / "tools" / "bench_shims"
UMODBUS_SPEC = "micropython-modbus==2.3.7"

# The server's register map, shared with host_tests/test_modbus.py.
UNIT = 17
REG_COUNT = 200  # addresses 0..199 exist; 200 and up answer ILLEGAL_DATA_ADDRESS


def holding_value(addr):
    return (addr * 7 + 1) & 0xFFFF


def input_value(addr):
    return 0x1000 + addr


# ------------------------------------------------------------------ server


def serve(port, host="127.0.0.1"):
    """Run a pymodbus RTU-over-TCP server until killed (blocking)."""
    import logging

    from pymodbus import FramerType
    from pymodbus.server import StartAsyncTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    logging.disable(logging.CRITICAL)  # pymodbus logs every odd frame
    # Separate blocks so FC03 and FC04 read different values. SimData addresses
    # are the request addresses (the old ModbusSequentialDataBlock was offset by one).
    device = SimDevice(
        id=UNIT,
        simdata=(
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[holding_value(a) for a in range(REG_COUNT)], datatype=DataType.REGISTERS)],
            [SimData(0, values=[input_value(a) for a in range(REG_COUNT)], datatype=DataType.REGISTERS)],
        ),
    )
    asyncio.run(StartAsyncTcpServer(device, address=(host, port), framer=FramerType.RTU))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """The pymodbus server in a child process: killing it is a real link loss."""

    def __init__(self, port):
        self.port = port
        self.proc = None

    def start(self, timeout_s=15.0):
        self.proc = children.spawn(
            [sys.executable, "-m", "tools.bench_modbus", "--serve", str(self.port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"modbus server exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"modbus server not listening on {self.port}")

    def stop(self):
        if self.proc:
            children.end(self.proc, signal.SIGKILL)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


# ------------------------------------------------------------------ bench

# The two programs (tools/device/): each times its master's reads through
# the same loop (tools/device/bench_timed.py).
PROGRAMS = {"ours": "bench_modbus_ours", "umodbus": "bench_modbus_umodbus"}


def _fetch_umodbus():
    subprocess.run(
        ["tools/fetch_mpy_lib.sh", UMODBUS_SPEC, "umodbus", "build/lib"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )


def _run_mpy(name, args, micropypath):
    env = dict(os.environ, MICROPYPATH=micropypath)
    proc = subprocess.run([str(MICROPYTHON), str(device.path(name)), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"micropython failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.splitlines()[-1])


def measure(reads=1000, regs=50, rounds=5):
    """Best-of-`rounds` CPU and wall time of `reads` FC03 reads, per variant."""
    _fetch_umodbus()
    expect = [holding_value(a) for a in range(4)]
    ours_path = "firmware:build/lib:.frozen"
    umodbus_path = f"{SHIMS}:build/lib:.frozen"
    best = {}
    with ServerProcess(free_port()) as server:
        args = [server.port, UNIT, reads, regs]
        jobs = {
            "ours": (PROGRAMS["ours"], [*args, 0], ours_path),
            "ours_unpacked": (PROGRAMS["ours"], [*args, 1], ours_path),
            "umodbus": (PROGRAMS["umodbus"], args, umodbus_path),
        }
        for _ in range(rounds):  # interleaved, so drift hits all alike
            for name, (program, prog_args, path) in jobs.items():
                res = _run_mpy(program, prog_args, path)
                if res["regs"] != expect:
                    raise RuntimeError(f"{name} read wrong values: {res['regs']}")
                if name not in best or res["cpu_us"] < best[name]["cpu_us"]:
                    best[name] = res
    return best


def run(results):
    best = measure()
    ours, unpacked, theirs = best["ours"], best["ours_unpacked"], best["umodbus"]
    results["modbus_master_cpu_ms_1000_reads"] = round(ours["cpu_us"] / 1000, 2)
    results["modbus_umodbus_cpu_ms_1000_reads"] = round(theirs["cpu_us"] / 1000, 2)
    results["modbus_cpu_ratio_vs_umodbus"] = round(ours["cpu_us"] / theirs["cpu_us"], 3)
    results["modbus_master_unpacked_cpu_ms_1000_reads"] = round(unpacked["cpu_us"] / 1000, 2)
    results["modbus_cpu_ratio_vs_umodbus_unpacked"] = round(unpacked["cpu_us"] / theirs["cpu_us"], 3)
    results["modbus_master_wall_ms_1000_reads"] = round(ours["wall_us"] / 1000, 2)
    results["modbus_umodbus_wall_ms_1000_reads"] = round(theirs["wall_us"] / 1000, 2)
    results["modbus_wall_ratio_vs_umodbus"] = round(ours["wall_us"] / theirs["wall_us"], 3)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, metavar="PORT", help="only run the pymodbus server")
    args = ap.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    results = run({})
    for key, value in results.items():
        print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
