# `make bench` refresh: Modbus transactions and bytes on the wire per
# telemetry refresh of the SunSpec driver against the simulator on PORT, and
# those bytes against the minimum. One JSON line.
#
#     micropython tools/device/bench_refresh.py PORT
import json
import sys

from v2g.hal.tcpstream import TcpStream
from v2g.meas import Meas
from v2g.modbus import RtuMaster
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
