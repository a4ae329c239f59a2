"""The simulated site (tools/sim) against independent references.

The register map is checked with pysunspec2's own code: its scanner finds the
base address, its model classes decode every point, and offsets, lengths and
encodings are compared with what tools/sim/sunspec_map.py laid out. The live
tests talk to the simulator through pymodbus with RTU framing over TCP, as the
firmware does.
"""
import asyncio
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time

import pytest
from pymodbus.client import AsyncModbusTcpClient, ModbusTcpClient
from pymodbus.framer import FramerType
from sunspec2.modbus.client import SunSpecModbusClientDevice, SunSpecModbusClientException

from tools.sim.battery import EvBattery
from tools.sim.clock import ManualClock, WarpClock
from tools.sim.grid import Grid
from tools.sim.inverter import SimInverter
from tools.sim.sunspec_map import SunSpecMap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_DER_MODELS = [1] + list(range(701, 716))
# Two instances of every repeating group, so instance offsets are exercised.
TWO_EACH = {705: {"Crv": 2, "Pt": 3}, 706: {"Crv": 2, "Pt": 3}, 707: {"Crv": 2, "Pt": 2},
            708: {"Crv": 2, "Pt": 2}, 709: {"Crv": 2, "Pt": 2}, 710: {"Crv": 2, "Pt": 2},
            711: {"Ctl": 2}, 712: {"Crv": 2, "Pt": 2}, 714: {"Prt": 2}}


# ---- pysunspec2 as the reference reader -------------------------------------

class MapDevice(SunSpecModbusClientDevice):
    """pysunspec2's device logic reading a SunSpecMap's registers directly."""

    def __init__(self, smap):
        super().__init__()
        self.smap = smap

    def read(self, addr, count, op=None):
        # pysunspec2 computes some addresses as floats (len(data) / 2)
        try:
            regs = self.smap.read_regs(int(addr), int(count))
        except IndexError as exc:
            raise SunSpecModbusClientException(str(exc)) from None
        return struct.pack(">%dH" % len(regs), *regs)

    def write(self, addr, data):
        self.smap.write_regs(int(addr), list(struct.unpack(">%dH" % (len(data) // 2), data)))


class RtuTcpDevice(SunSpecModbusClientDevice):
    """pysunspec2's device logic over pymodbus: RTU frames over TCP."""

    def __init__(self, port, unit):
        super().__init__()
        self.unit = unit
        self.client = ModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=2, retries=1)
        assert self.client.connect()

    def read(self, addr, count, op=None):
        rr = self.client.read_holding_registers(int(addr), count=int(count), device_id=self.unit)
        if rr.isError():
            raise SunSpecModbusClientException(str(rr))
        return struct.pack(">%dH" % len(rr.registers), *rr.registers)

    def write(self, addr, data):
        regs = list(struct.unpack(">%dH" % (len(data) // 2), data))
        rr = self.client.write_registers(int(addr), regs, device_id=self.unit)
        if rr.isError():
            raise SunSpecModbusClientException(str(rr))


def scan(smap):
    dev = MapDevice(smap)
    dev.scan()
    return dev


def model(dev, model_id):
    return dev.models[model_id][0]


def sunspec2_points(group, prefix=""):
    """(path, point) for every point pysunspec2 built, paths as the map names them."""
    for name, point in group.points.items():
        yield prefix + name, point
    for name, sub in group.groups.items():
        if isinstance(sub, list):
            for i, inst in enumerate(sub):
                yield from sunspec2_points(inst, "%s%s[%d]." % (prefix, name, i))
        else:
            yield from sunspec2_points(sub, "%s%s." % (prefix, name))


def count_point_names(gdef):
    names = set()
    for sub in gdef.get("groups", ()):
        if isinstance(sub.get("count"), str):
            names.add(sub["count"])
        names |= count_point_names(sub)
    return names


def sample_value(point, i):
    """A value that fits the point's type and is not its not-implemented value."""
    if point.type == "string":
        return ("P%d" % i)[:point.regs * 2]
    bits = 16 * point.regs
    v = ((i + 1) * 0x9E3779B97F4A7C15) % (1 << bits)
    if point.type in ("int16", "int32", "int64", "sunssf") and v >= 1 << (bits - 1):
        v -= 1 << bits
    if v in (0, -(1 << (bits - 1)), (1 << bits) - 1):
        v = 1
    return v


# ---- layout: pysunspec2 agrees with the map ----------------------------------

@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_layout_matches_pysunspec2(base):
    smap = SunSpecMap(base_addr=base, models=ALL_DER_MODELS, group_counts=TWO_EACH)
    regs = smap.registers()
    assert regs[:2] == [0x5375, 0x6E53]  # 'SunS'
    assert regs[-2:] == [0xFFFF, 0]  # end model, L=0
    assert len(regs) == smap.end - base

    dev = scan(smap)
    assert dev.base_addr == base  # pysunspec2 tried 40000, 0, 50000 in its own order
    for model_id in ALL_DER_MODELS:
        ref = model(dev, model_id)
        assert ref.error_info == "", (model_id, ref.error_info)
        assert ref.model_addr == smap.model_addr(model_id)
        assert ref.len == smap.model_len(model_id)
        ref_points = dict(sunspec2_points(ref))
        ours = {p.name: p for p in smap.points(model_id)}
        assert set(ref_points) == set(ours), model_id
        for name, ref_point in ref_points.items():
            assert ref.model_addr + ref_point.offset == ours[name].addr, (model_id, name)
            assert ref_point.len == ours[name].regs, (model_id, name)
    assert len(model(dev, 711).groups["Ctl"]) == 2
    assert model(dev, 711).NCtl.value == 2


def test_encodings_match_pysunspec2():
    smap = SunSpecMap(models=ALL_DER_MODELS, group_counts=TWO_EACH)
    dev = scan(smap)
    expected = {}
    for model_id in ALL_DER_MODELS:
        skip = {"ID", "L"} | count_point_names(model(dev, model_id).model_def["group"])
        for i, point in enumerate(smap.points(model_id)):
            if point.name in skip or point.type == "pad":
                continue
            value = sample_value(point, i + model_id)
            smap.set(model_id, point.name, value)
            assert smap.get(model_id, point.name) == value
            expected[(model_id, point.name)] = value
    dev = scan(smap)  # decode everything afresh
    checked = 0
    for model_id in ALL_DER_MODELS:
        for name, ref_point in sunspec2_points(model(dev, model_id)):
            if (model_id, name) in expected:
                assert ref_point.value == expected[(model_id, name)], (model_id, name)
                checked += 1
    assert checked == len(expected) > 400


def test_addr_of_spellings():
    smap = SunSpecMap()
    m704, m711 = smap.model_addr(704), smap.model_addr(711)
    assert smap.addr_of(701, "W") == smap.model_addr(701) + 10  # MODELS_FLAT.md: W@10
    assert smap.addr_of(704, "WSet") == m704 + 24
    assert smap.addr_of(704, "PFWInj.Ext") == m704 + 60
    assert smap.addr_of(711, "Ctl.PMin", index=0) == smap.addr_of(711, "Ctl[0].PMin") == m711 + 22
    with pytest.raises(KeyError):
        smap.addr_of(711, "Ctl.PMin")  # a repeating group needs its index


def test_scaled_values_match_pysunspec2_cvalue():
    inv = SimInverter(ManualClock(1.7e9), w_sf=1, hz_sf=-2, totwh_sf=1, wset_sf=-1, wh_abs=12345.0)
    inv.set_freq_hz(49.87)
    inv.step(1.7e9)
    inv.map.set_scaled(704, "WSet", -2500.5)
    dev = scan(inv.map)
    m701, m704, m713 = model(dev, 701), model(dev, 704), model(dev, 713)
    assert m701.W_SF.value == 1 and m701.Hz_SF.value == -2
    assert m701.Hz.value == 4987 and m701.Hz.cvalue == pytest.approx(49.87)
    assert m701.TotWhAbs.cvalue == 12340  # counted in tens of Wh with TotWh_SF=1
    assert m704.WSet.value == -25005 and m704.WSet.cvalue == pytest.approx(-2500.5)
    assert m713.SoC.cvalue == pytest.approx(50.0)
    assert m713.WHRtg.cvalue == 60000
    assert inv.map.get_scaled(701, "Hz") == pytest.approx(m701.Hz.cvalue)


# ---- not implemented ---------------------------------------------------------

# SUNSPEC_NOTES.md: the "not implemented" value of each type.
NOT_IMPLEMENTED = {
    "int16": [0x8000], "uint16": [0xFFFF], "enum16": [0xFFFF], "bitfield16": [0xFFFF],
    "sunssf": [0x8000], "int32": [0x8000, 0], "uint32": [0xFFFF, 0xFFFF],
    "bitfield32": [0xFFFF, 0xFFFF], "uint64": [0xFFFF] * 4,
}


def test_omitted_points_read_not_implemented():
    omit = {(701, "Hz"), (713, "SoH"), (701, "W"), (701, "Alrm"), (701, "TotWhInj"),
            (704, "WSet_SF"), (704, "WSetMod"), (1, "SN"), (701, "ACType")}
    inv = SimInverter(ManualClock(1.7e9), omit_points=omit)
    inv.step(1.7e9)
    inv.step(1.7e9 + 10)
    smap = inv.map
    for model_id, name in omit:
        point = smap.point(model_id, name)
        raw = smap.read_regs(point.addr, point.regs)
        if point.type == "string":
            assert raw == [0] * point.regs
        else:
            assert raw == NOT_IMPLEMENTED[point.type], (model_id, name)
        assert smap.get(model_id, name) is None
    dev = scan(smap)
    for model_id, name in omit:
        assert getattr(model(dev, model_id), name).value is None, (model_id, name)
    assert model(dev, 713).SoC.value is not None  # its neighbours are untouched
    # writing an omitted point from the bus is refused like a read-only one
    assert not smap.writable(smap.addr_of(704, "WSetMod"), 1)
    assert smap.writable(smap.addr_of(704, "WSetEna"), 1)


def test_omitted_scale_factor_leaves_its_points_not_implemented():
    inv = SimInverter(ManualClock(1.7e9), omit_points={(701, "W_SF"), (713, "Pct_SF")})
    inv.step(1.7e9 + 1)
    dev = scan(inv.map)
    assert model(dev, 701).W.value is None and model(dev, 701).W_SF.value is None
    assert model(dev, 713).SoC.value is None
    assert model(dev, 701).Hz.value is not None


def test_unset_points_are_not_implemented_and_acc_is_zero():
    smap = SunSpecMap(models=[1, 701])
    assert smap.get(701, "TmpCab") is None
    assert smap.read_regs(smap.addr_of(701, "TmpCab"), 1) == [0x8000]
    assert smap.get(1, "Pad") == 0


def test_values_that_would_read_as_not_implemented_are_refused():
    smap = SunSpecMap(models=[1, 701])
    with pytest.raises(ValueError):
        smap.set(701, "W", -32768)
    with pytest.raises(ValueError):
        smap.set(701, "LLV", 0xFFFF)
    with pytest.raises(ValueError):
        smap.set(1, "Mn", "x" * 33)


# ---- battery -----------------------------------------------------------------

def test_battery_energy_conservation_with_efficiency():
    bat = EvBattery(60000, 50.0, charge_eff=0.95, discharge_eff=0.9, max_charge_w=7000, max_discharge_w=7000)
    for _ in range(3600):
        assert bat.step(7000, 1.0) == pytest.approx(7000)
    assert bat.charged_wh == pytest.approx(7000)
    assert bat.stored_wh == pytest.approx(30000 + 7000 * 0.95)
    for _ in range(3600):
        assert bat.step(-6000, 1.0) == pytest.approx(-6000)
    assert bat.discharged_wh == pytest.approx(6000)
    assert bat.stored_wh == pytest.approx(30000 + 6650 - 6000 / 0.9)
    # terminal energy in = terminal energy out + stored gain + losses
    assert bat.charged_wh == pytest.approx(bat.discharged_wh + (bat.stored_wh - 30000) + bat.loss_wh)


def test_battery_tapers_near_full_and_empty():
    full = EvBattery(60000, 95.0, max_charge_w=10000, max_discharge_w=10000)
    assert full.step(10000, 0.1) == pytest.approx(10000 * 0.55, rel=1e-3)
    assert full.step(-10000, 0.1) == pytest.approx(-10000)
    empty = EvBattery(60000, 5.0, max_charge_w=10000, max_discharge_w=10000)
    assert empty.step(-10000, 0.1) == pytest.approx(-10000 * 0.55, rel=1e-3)
    assert empty.step(10000, 0.1) == pytest.approx(10000)


def test_battery_soc_stays_within_bounds():
    bat = EvBattery(10000, 99.0, max_charge_w=50000, max_discharge_w=50000)
    for _ in range(100):
        bat.step(50000, 600.0)
        assert 0.0 <= bat.soc_pct <= 100.0
    assert bat.soc_pct == pytest.approx(100.0)
    assert bat.step(50000, 1.0) == 0.0
    for _ in range(200):
        bat.step(-50000, 600.0)
        assert 0.0 <= bat.soc_pct <= 100.0
    assert bat.soc_pct == pytest.approx(0.0, abs=1e-9)
    assert bat.step(-50000, 1.0) == 0.0


# ---- inverter behaviour (stepped by hand) ---------------------------------------

class Controller:
    """Writes 704 through pysunspec2, as a SunSpec master would."""

    def __init__(self, inv):
        self.dev = scan(inv.map)
        self.m704 = model(self.dev, 704)

    def setpoint(self, wset_w, rvrt_tms=None):
        m = self.m704
        m.WSetEna.value = 1
        m.WSetMod.value = 1  # WATTS
        m.WSet.cvalue = wset_w
        if rvrt_tms is not None:
            m.WSetRvrt.value = 0
            m.WSetRvrtTms.value = rvrt_tms
        m.write()

    def read(self, model_id):
        ref = model(self.dev, model_id)
        ref.read()
        return ref


def run_for(inv, clock, seconds, dt_s=0.1):
    for _ in range(int(round(seconds / dt_s))):
        inv.step(clock.advance(dt_s))


def test_sign_convention_wset_positive_discharges_the_ev():
    clock = ManualClock(1.7e9)
    inv = SimInverter(clock, wset_sf=0)
    inv.step(clock.now())
    ctl = Controller(inv)
    ctl.setpoint(3000)  # SunSpec: +3000 W injected into the grid
    run_for(inv, clock, 2.0)
    assert inv.ev_w == pytest.approx(-3000)  # out of the EV
    assert ctl.read(701).W.cvalue == 3000
    assert inv.soc_pct < 50.0
    ctl.setpoint(-5000)  # absorbing from the grid charges the EV
    run_for(inv, clock, 2.0)
    assert inv.ev_w == pytest.approx(5000)
    m701 = ctl.read(701)
    assert m701.W.cvalue == -5000
    assert m701.TotWhInj.value >= 1 and m701.TotWhAbs.value >= 2
    assert inv.writes[-1][1] == -5000


def test_ramp_and_ratings():
    clock = ManualClock(1.7e9)
    inv = SimInverter(clock, ramp_w_per_s=10000, max_charge_w=7400, max_discharge_w=5000)
    inv.step(clock.now())
    ctl = Controller(inv)
    ctl.setpoint(-20000)
    run_for(inv, clock, 0.5)
    assert inv.ev_w == pytest.approx(5000)  # 0.5 s at 10 kW/s
    run_for(inv, clock, 2.0)
    assert inv.ev_w == pytest.approx(7400)  # clamped to WChaRteMaxRtg
    ctl.setpoint(20000)
    run_for(inv, clock, 3.0)
    assert inv.ev_w == pytest.approx(-5000)  # clamped to WDisChaRteMaxRtg


def test_revert_timer_falls_back_to_wsetrvrt():
    clock = ManualClock(1.7e9)
    inv = SimInverter(clock)
    inv.step(clock.now())
    ctl = Controller(inv)
    ctl.setpoint(-4000, rvrt_tms=10)
    for _ in range(5):  # refreshed every 6 s: never reverts
        run_for(inv, clock, 6.0)
        assert inv.ev_w == pytest.approx(4000)
        ctl.setpoint(-4000)
    assert inv.reversions == 0
    snap = inv.snapshot()  # the refreshes and the longest time between two
    assert snap["refreshes"] == 6 and snap["revert_s"] == 10
    assert snap["max_refresh_gap_s"] == pytest.approx(6.0) and snap["max_refresh_gap_real_s"] >= 0
    run_for(inv, clock, 5.0)
    assert ctl.read(704).WSetRvrtRem.value == 5
    run_for(inv, clock, 5.5)
    assert inv.reversions == 1
    run_for(inv, clock, 1.0)
    assert inv.ev_w == 0.0
    assert ctl.read(704).WSetRvrtRem.value == 0
    run_for(inv, clock, 30.0)
    assert inv.reversions == 1  # once per missed refresh, not once per step
    ctl.setpoint(-4000)
    assert inv.snapshot()["max_refresh_gap_s"] == pytest.approx(41.5)  # the silence that reverted
    run_for(inv, clock, 1.0)
    assert inv.ev_w == pytest.approx(4000)


def test_disabled_setpoint_outputs_zero():
    clock = ManualClock(1.7e9)
    inv = SimInverter(clock)
    inv.step(clock.now())
    ctl = Controller(inv)
    ctl.setpoint(-4000)
    run_for(inv, clock, 1.0)
    ctl.m704.WSetEna.value = 0
    ctl.m704.write()
    run_for(inv, clock, 1.0)
    assert inv.ev_w == 0.0


def test_fault_trips_and_clears():
    clock = ManualClock(1.7e9)
    inv = SimInverter(clock)
    inv.step(clock.now())
    ctl = Controller(inv)
    ctl.setpoint(-6000)
    run_for(inv, clock, 1.0)
    inv.inject_fault("GROUND_FAULT")
    assert inv.ev_w == 0.0
    run_for(inv, clock, 1.0)
    assert inv.ev_w == 0.0
    m701, m713 = ctl.read(701), ctl.read(713)
    assert m701.InvSt.value == 6 and m701.Alrm.value & 1
    assert m713.Sta.value == 2
    inv.clear_fault()
    run_for(inv, clock, 1.0)
    assert inv.ev_w == pytest.approx(6000)
    assert ctl.read(701).InvSt.value == 3
    inv.inject_fault(7)
    m715 = model(ctl.dev, 715)
    m715.AlarmReset.value = 1  # a master can reset the latched alarm
    m715.write()
    assert inv.alarm == 0


def test_heartbeats_and_frequency():
    clock = ManualClock(1.7e9)
    grid = Grid(events=[{"start": 1.7e9 + 100, "dur_s": 60, "hz": 49.5}], seed=3)
    inv = SimInverter(clock, grid=grid)
    inv.step(clock.now())
    ctl = Controller(inv)
    run_for(inv, clock, 10.0, dt_s=0.5)
    assert ctl.read(715).DERHb.value == 10
    assert abs(ctl.read(701).Hz.cvalue - 50.0) <= 0.021
    run_for(inv, clock, 110.0, dt_s=0.5)
    assert ctl.read(701).Hz.cvalue == pytest.approx(49.5, abs=0.021)
    inv.set_freq_hz(50.2)
    run_for(inv, clock, 0.5)
    assert ctl.read(701).Hz.cvalue == pytest.approx(50.2)
    m715 = model(ctl.dev, 715)
    m715.ControllerHb.value = 42
    m715.write()
    assert inv.controller_hb_s == clock.now()


def test_frequency_droop_when_enabled():
    clock = ManualClock(1.7e9)
    inv = SimInverter(clock)
    inv.step(clock.now())
    ctl = Controller(inv)
    ctl.setpoint(0)
    m711 = model(ctl.dev, 711)
    m711.Ena.value = 1
    m711.write()
    inv.set_freq_hz(50.236)  # 200 mHz past the 36 mHz deadband, 5 % droop
    run_for(inv, clock, 2.0)
    assert inv.ev_w == pytest.approx(0.2 / (50 * 0.05) * 11000)  # absorbs: charges the EV


# ---- grid and clock ------------------------------------------------------------

TARIFF = [
    {"start": "22:00", "end": "06:00", "import": 0.3, "export": 0.1},
    {"start": "06:00", "end": "17:00", "import": 0.6, "export": 0.3},
    {"start": "17:00", "end": "22:00", "import": 1.1, "export": 0.9},
]


def test_grid_tariff_wraps_midnight_and_honours_utc_offset():
    day = 1700006400  # 2023-11-15 00:00 UTC
    grid = Grid(TARIFF)
    assert grid.price(day + 23 * 3600) == (0.3, 0.1)
    assert grid.price(day + 3 * 3600) == (0.3, 0.1)
    assert grid.price(day + 6 * 3600) == (0.6, 0.3)
    assert grid.price(day + 21 * 3600 + 59 * 60) == (1.1, 0.9)
    east = Grid(TARIFF, utc_offset_min=480)  # UTC+8: 10:00 UTC is 18:00 local
    assert east.price(day + 10 * 3600) == (1.1, 0.9)
    assert grid.cheapest_import(0) == 0.3


def test_grid_tariff_seasons_follow_the_local_month():
    # a summer schedule for July and August; 31 July 23:00 local (UTC+8) is
    # summer's, 1 August 23:00 too, 1 September back to the base periods
    summer = [{"start": "00:00", "end": "12:00", "import": 0.2, "export": 0.1},
              {"start": "12:00", "end": "00:00", "import": 1.4, "export": 1.2}]
    grid = Grid(TARIFF, utc_offset_min=480, seasons=[{"months": [7, 8], "periods": summer}])
    jul31 = 1785456000 - 8 * 3600  # 2026-07-31 00:00 local
    assert grid.price(jul31 + 23 * 3600) == (1.4, 1.2)
    assert grid.price(jul31 + 86400 + 23 * 3600) == (1.4, 1.2)
    sep1 = jul31 + 32 * 86400
    assert grid.price(sep1 + 23 * 3600) == (0.3, 0.1)
    assert grid.price(sep1 - 3600) == (1.4, 1.2)  # 31 August 23:00
    assert grid.cheapest_import(jul31) == 0.2 and grid.cheapest_import(sep1) == 0.3


def test_grid_frequency_noise_is_small_and_deterministic():
    a, b, c = Grid(seed=1), Grid(seed=1), Grid(seed=2)
    times = [1.7e9 + k * 7.3 for k in range(20000)]
    fa = [a.freq_hz(t) for t in times]
    assert fa == [b.freq_hz(t) for t in times]
    assert fa != [c.freq_hz(t) for t in times]
    assert max(abs(f - 50.0) for f in fa) <= 0.020
    assert max(abs(f - 50.0) for f in fa) > 0.005


def test_grid_frequency_event_ramps_in_and_out():
    grid = Grid(events=[{"start": 1000, "dur_s": 30, "hz": 49.2}], seed=0, rocof_hz_per_s=0.5)
    noise = grid.noise_hz
    assert grid.freq_hz(999) - noise(999) == pytest.approx(50.0)
    assert grid.freq_hz(1000.8) - noise(1000.8) == pytest.approx(49.6)  # halfway down at 0.5 Hz/s
    assert grid.freq_hz(1015) - noise(1015) == pytest.approx(49.2)
    assert grid.freq_hz(1031) - noise(1031) == pytest.approx(50.0)


def test_warp_clock_env_round_trip():
    clock = WarpClock(warp=720, real_epoch=1700000000.1234, sim_epoch=1699999200.0)
    spec = clock.to_env()
    assert spec == "720,1700000000123,1699999200000"
    again = WarpClock.from_env(spec)
    assert (again.warp, again.real_epoch_ms, again.sim_epoch_ms) == (720, 1700000000123, 1699999200000)
    t0 = time.time()
    now = again.now()
    assert now == pytest.approx(1699999200.0 + (t0 - 1700000000.123) * 720, abs=720 * 0.05)
    live = WarpClock(warp=1000)
    s0 = live.now()
    time.sleep(0.05)
    assert 40 <= live.now() - s0 <= 200


# ---- live over pymodbus ------------------------------------------------------

async def _read_suns(base, unit):
    inv = SimInverter(WarpClock(), base_addr=base, unit=unit)
    port = await inv.start(port=0)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=0.5, retries=0)
    try:
        assert await client.connect()
        rr = await client.read_holding_registers(base, count=4, device_id=unit)
        assert not rr.isError()
        other = 0 if base else 40000
        wrong_base = await client.read_holding_registers(other, count=2, device_id=unit)
        assert wrong_base.isError() and wrong_base.exception_code == 2
        return rr.registers, inv.transactions
    finally:
        client.close()
        await inv.stop()


@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_pymodbus_client_reads_suns_at_each_base(base):
    regs, transactions = asyncio.run(_read_suns(base, unit=7))
    assert regs == [0x5375, 0x6E53, 1, 66]  # 'SunS', model 1, L=66
    assert transactions == 2


async def _link_faults():
    inv = SimInverter(WarpClock())
    port = await inv.start(port=0)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, framer=FramerType.RTU, timeout=0.3, retries=0)
    results = {}
    try:
        await client.connect()

        async def read(unit=1):
            try:
                rr = await client.read_holding_registers(40000, count=2, device_id=unit)
                return "exception %d" % rr.exception_code if rr.isError() else rr.registers
            except Exception as exc:  # timeouts and bad frames surface as ModbusIOException
                return type(exc).__name__

        results["other unit"] = await read(unit=9)
        inv.busy_responses(1)
        results["busy"] = await read()
        inv.drop_requests(1)
        results["dropped"] = await read()
        inv.corrupt_responses(1)
        results["corrupt"] = await read()
        await asyncio.sleep(0.3)
        results["after"] = await read()
    finally:
        client.close()
        await inv.stop()
    return results


def test_link_fault_hooks():
    results = asyncio.run(_link_faults())
    assert results["other unit"] == "ModbusIOException"  # a foreign unit id gets silence
    assert results["busy"] == "exception 6"
    assert results["dropped"] == "ModbusIOException"
    assert results["corrupt"] == "ModbusIOException"


async def _warped_charge():
    clock = WarpClock(warp=3600)
    inv = SimInverter(clock, capacity_wh=60000, soc_pct=20)
    await inv.start(port=0)
    try:
        inv.map.write_regs(inv.map.addr_of(704, "WSetEna"), [1, 1, 0xFFFF, 0xD508])  # WSet -11000 W
        t0 = clock.now()
        await asyncio.sleep(0.5)
        return clock.now() - t0, inv.battery.charged_wh
    finally:
        await inv.stop()


def test_physics_integrates_simulated_time():
    sim_s, charged_wh = asyncio.run(_warped_charge())
    assert sim_s > 1000  # half a wall second is half an hour here
    assert charged_wh == pytest.approx(11000 * sim_s / 3600, rel=0.05)


def test_inverter_process_end_to_end(tmp_path):
    state = tmp_path / "inverter.json"
    clock = WarpClock(warp=10)
    cmd = [sys.executable, "-m", "tools.sim.inverter_main", "--port", "0", "--unit", "5",
           "--base", "50000", "--soc", "60", "--capacity-wh", "40000", "--clock", clock.to_env(),
           "--omit", "713.SoH", "--w-sf", "1", "--hz-sf", "-2", "--state-file", str(state)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no READY line within 30 s"
        line = proc.stdout.readline().strip()
        assert line.startswith("READY port="), line
        dev = RtuTcpDevice(int(line.split("=")[1]), unit=5)
        dev.scan()  # pysunspec2 walks 40000, 0, then finds 50000
        assert dev.base_addr == 50000
        assert sorted(k for k in dev.models if isinstance(k, int)) == [1, 701, 702, 704, 711, 713, 715]
        m1, m701, m704, m713 = (model(dev, i) for i in (1, 701, 704, 713))
        assert m1.DA.value == 5 and m1.Mn.value
        assert m701.W_SF.value == 1 and m701.Hz_SF.value == -2
        assert m713.SoH.value is None and m713.SoC.cvalue == pytest.approx(60.0)
        assert m713.WHRtg.cvalue == 40000
        m704.WSetEna.value = 1
        m704.WSetMod.value = 1
        m704.WSet.value = 2000  # inject 2 kW: the EV discharges
        m704.WSetRvrt.value = 0
        m704.WSetRvrtTms.value = 30
        m704.write()
        time.sleep(0.5)
        m701.read()
        assert m701.W.cvalue == 2000
        snap = json.loads(state.read_text())
        assert snap["ev_w"] == pytest.approx(-2000) and snap["last_wset_w"] == 2000
        assert snap["soc_pct"] < 60.0
        dev.client.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=10)
    assert rc == 0
    final = json.loads(state.read_text())
    assert final["wh_out"] > 0 and final["reversions"] == 0


def test_a_state_file_that_blocks_does_not_silence_the_modbus_server(tmp_path):
    """The state snapshot goes to a file; a file write can block (a rename
    behind a journal commit took 0.2 s, the whole reversion window of `make
    sim`). Here the file blocks for good: its temporary file is a FIFO nobody
    reads. The inverter must go on answering Modbus meanwhile: the file is
    written from a thread of its own, never from the loop that serves."""
    state = tmp_path / "state.json"
    os.mkfifo(str(state) + ".tmp")  # write_state opens STATE.tmp: blocks until a reader comes
    cmd = [sys.executable, "-m", "tools.sim.inverter_main", "--port", "0", "--state-file", str(state),
           "--state-period-s", "0.005"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    client = None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "no READY line within 30 s"
        line = proc.stdout.readline().strip()
        assert line.startswith("READY port="), line
        client = ModbusTcpClient("127.0.0.1", port=int(line.split("=")[1]), framer=FramerType.RTU,
                                 timeout=5, retries=0)
        assert client.connect()
        for _ in range(3):  # the writer is stuck in open() all along
            rr = client.read_holding_registers(40000, count=2, device_id=1)
            assert not rr.isError(), rr
            assert struct.pack(">2H", *rr.registers) == b"SunS"
        # a reader comes: the stuck snapshot goes through, later ones follow
        fd = os.open(str(state) + ".tmp", os.O_RDONLY | os.O_NONBLOCK)
        try:
            got = b""
            while not got.endswith(b"}"):
                assert select.select([fd], [], [], 10)[0], "the writer never wrote"
                chunk = os.read(fd, 65536)
                assert chunk, got
                got += chunk
        finally:
            os.close(fd)
        assert json.loads(got)["reversions"] == 0  # the snapshot that waited, whole
        deadline = time.monotonic() + 10
        while not state.is_file() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert state.is_file()  # a regular file again, rewritten as before
    finally:
        if client is not None:
            client.close()
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # the old loop, blocked in open(), never sees SIGTERM
            rc = proc.wait(5)
    assert rc == 0
    final = json.loads(state.read_text())
    assert final["transactions"] >= 3 and final["reversions"] == 0
