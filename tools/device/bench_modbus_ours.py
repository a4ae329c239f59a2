# tools/bench_modbus: this firmware's Modbus master (v2g.modbus over
# TcpStream) reading REGS holding registers N times from the server on PORT.
# UNPACK 1: every register unpacked too, as micropython-modbus hands them out.
#
#     micropython tools/device/bench_modbus_ours.py PORT UNIT N REGS UNPACK
import struct
import sys

from bench_timed import timed
from v2g.hal.tcpstream import TcpStream
from v2g.modbus import RtuMaster

port, unit, n, nregs, unpack = (int(a) for a in sys.argv[1:6])
master = RtuMaster(TcpStream("127.0.0.1", port), unit, timeout_ms=500)
FMT = ">%dH" % nregs
if unpack:
    def read():
        return struct.unpack_from(FMT, master.read_holding(0, nregs))

    def first4(regs):
        return list(regs[:4])
else:
    def read():
        return master.read_holding(0, nregs)

    def first4(regs):  # a memoryview of big-endian register bytes
        return list(struct.unpack_from(">4H", regs))

timed(read, first4, n)
