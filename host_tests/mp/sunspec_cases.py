# test_sunspec.py's MicroPython half: the SunSpec driver against the inverter
# simulator on PORT (host_tests/mp/cases.py).
import cases
from v2g.hal.tcpstream import TcpStream
from v2g.meas import Meas
from v2g.modbus import RtuMaster
from v2g.sunspec import NotSunSpec, SunSpecInverter


def _connect(port, revert_s=5):
    m = RtuMaster(TcpStream("127.0.0.1", int(port)), 1, timeout_ms=300)
    inv = SunSpecInverter(m, None, revert_s)
    return m, inv, inv.discover()


def read(port):
    # discovery, then one refresh at tick 7: what the driver found and read
    m, inv, models = _connect(port)
    meas = Meas()
    t0 = m.transactions
    inv.refresh(meas, 7)
    return {"base": inv.base, "models": sorted(models), "info": inv.info,
            "sf": {str(k): v for k, v in inv.sf.items()},
            "refresh_transactions": m.transactions - t0, "ev_w": meas.ev_w, "hz_mhz": meas.hz_mhz,
            "soc_cpct": meas.soc_cpct, "soc_res": meas.soc_res_cpct, "wh_in": meas.wh_in, "wh_out": meas.wh_out,
            "fault": meas.inv_fault, "ticks": [meas.ev_tick, meas.hz_tick, meas.soc_tick],
            "droop": inv.inverter_droop, "ratings": inv.ratings, "ac_v": meas.ac_v}


def setpoint(port):
    # Modbus transactions of the first setpoint write and of the next one
    m, inv, _ = _connect(port)
    t0 = m.transactions
    inv.write_setpoint(-3000)     # discharge 3 kW
    first = m.transactions - t0
    t0 = m.transactions
    inv.write_setpoint(2500)      # charge 2.5 kW
    second = m.transactions - t0
    return [first, second]


def setpoint_then_silent(port):
    # 4 kW with a 2 s reversion timer, then nothing more
    _, inv, _ = _connect(port, 2)
    inv.write_setpoint(4000)


def read_points(port):
    from v2g.sunspec_points import read_point

    _, inv, _ = _connect(port)
    return [read_point(inv, "701.Hz"), read_point(inv, "713.SoC"), read_point(inv, "704.WSetRvrtTms")]


def not_sunspec(port):
    # a Modbus device without SunSpec (unit 17): prints what discovery said
    m = RtuMaster(TcpStream("127.0.0.1", int(port)), 17, timeout_ms=300)
    try:
        SunSpecInverter(m).discover()
        print("found")
    except NotSunSpec as e:
        print("NotSunSpec", e)


cases.main(globals())
