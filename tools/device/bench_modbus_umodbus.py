# tools/bench_modbus: micropython-modbus's RTU master reading REGS holding
# registers N times from the server on PORT. Its RTU class builds
# machine.UART itself: tools/bench_shims/machine.py (on this run's path)
# gives it one that is a TCP socket.
#
#     MICROPYPATH=tools/bench_shims:build/lib:.frozen micropython tools/device/bench_modbus_umodbus.py PORT UNIT N REGS
import sys

import machine
from bench_timed import timed

port, unit, n, nregs = (int(a) for a in sys.argv[1:5])
machine.set_target("127.0.0.1", port)
from umodbus.serial import Serial  # noqa: E402 - after the shim knows its target

# 115200 baud only shortens umodbus's inter-frame sleeps (wall time, not CPU).
bus = Serial(uart_id=1, baudrate=115200, pins=(0, 1))


def read():
    return bus.read_holding_registers(unit, 0, nregs, False)


def first4(regs):
    return list(regs[:4])


timed(read, first4, n)
