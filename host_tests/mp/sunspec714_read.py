# Discovers the SunSpec inverter at 127.0.0.1:PORT, refreshes once and
# prints one JSON line: what the driver chose for 714, the DC values it read,
# the transactions the refresh cost, and the Meas attributes after the
# refresh next to the ones Meas.__init__ declares (host_tests/test_sunspec_714.py).
#   micropython sunspec714_read.py PORT
import json
import sys

from v2g.hal.tcpstream import TcpStream
from v2g.meas import Meas
from v2g.modbus import RtuMaster
from v2g.sunspec import SunSpecInverter

m = RtuMaster(TcpStream("127.0.0.1", int(sys.argv[1])), 1, timeout_ms=300)
inv = SunSpecInverter(m, None, 5)
models = inv.discover()
discover_txns = m.transactions
meas = Meas()
t0 = m.transactions
inv.refresh(meas, 7)
refresh_txns = m.transactions - t0
print(json.dumps({
    "models": sorted(models),
    "dc_port": inv.dc_port,
    "dc_span": inv.dc_span,
    "sf": {k[1]: v for k, v in inv.sf.items() if k[0] == 714},
    "dc_v": meas.dc_v, "dc_a": meas.dc_a, "dc_w": meas.dc_w, "ev_w": meas.ev_w,
    "discover_transactions": discover_txns,
    "refresh_transactions": refresh_txns,
    "needed": inv.needed_registers(),
    "attrs": sorted(meas.__dict__),
    "declared": sorted(Meas().__dict__),
}))
