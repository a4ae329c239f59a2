"""SunSpec driver on the unix port against a SunSpec inverter whose register
map is generated from pysunspec2's model JSON (tools/sim), not from the
driver's own tables."""
import pytest

from conftest import run_mp

def read_inverter(port):
    return run_mp("sunspec_cases", "read", port).json()


@pytest.mark.parametrize("base", [40000, 0, 50000])
def test_discovery_at_each_base_address(live_inverter, base):
    li = live_inverter(base_addr=base, soc_pct=63.3)
    got = read_inverter(li.port)
    assert got["base"] == base
    assert got["models"] == [1, 701, 702, 704, 711, 713, 715]
    assert got["info"]["SN"] and got["info"]["Mn"]
    assert got["refresh_transactions"] == 2  # one per needed model block
    assert got["soc_cpct"] == 6330 and got["soc_res"] == 10  # Pct_SF -1
    assert got["ticks"] == [7, 7, 7]


def test_nonzero_scale_factors_and_sign(live_inverter):
    import time
    li = live_inverter(w_sf=1, hz_sf=-2, pct_sf=-2, totwh_sf=1, wset_sf=-1, soc_pct=41.27,
                       wh_abs=123450, wh_inj=67890, ramp_w_per_s=1e6)
    inv = li.inv
    inv.grid.set_override_hz(49.87)
    # the inverter is told to inject 3000 W (SunSpec sign), WSet_SF -1
    li.call(lambda: (inv.map.set(704, "WSetMod", 1), inv.map.set(704, "WSet", 30000), inv.map.set(704, "WSetEna", 1)))
    time.sleep(0.2)
    got = read_inverter(li.port)
    assert got["sf"]["(701, 'W_SF')"] == 1 and got["sf"]["(701, 'Hz_SF')"] == -2
    # SunSpec W = +3000 (injection) is ev_w = -3000 (discharging the EV)
    assert li.inv.map.get(701, "W") == 300
    assert got["ev_w"] == -3000
    assert got["hz_mhz"] == 49870
    assert got["soc_cpct"] == 4127 and got["soc_res"] == 1
    assert got["wh_in"] == 123450 and got["wh_out"] == 67890  # TotWh_SF 1: tens of Wh
    assert got["fault"] is None


@pytest.mark.parametrize("omit,field", [
    ((701, "Hz"), "hz_mhz"), ((713, "SoC"), "soc_cpct"), ((701, "W"), "ev_w"),
    ((701, "W_SF"), "ev_w"), ((713, "Pct_SF"), "soc_cpct"), ((701, "TotWhAbs"), "wh_in")])
def test_not_implemented_points_are_unknown_never_numbers(live_inverter, omit, field):
    li = live_inverter(omit_points=[omit])
    got = read_inverter(li.port)
    assert got[field] is None
    for other in {"hz_mhz", "soc_cpct", "ev_w", "wh_in"} - {field}:
        if not (field == "ev_w" and other == "wh_in"):
            assert got[other] is not None, other


def test_without_optional_models(live_inverter):
    li = live_inverter(models=(1, 701, 704))
    got = read_inverter(li.port)
    assert got["models"] == [1, 701, 704]
    assert got["refresh_transactions"] == 1
    assert got["soc_cpct"] is None and got["ev_w"] == 0 and got["droop"] is False


def test_inverter_fault_is_reported(live_inverter):
    li = live_inverter()
    li.call(li.inv.inject_fault, "OVER_TEMP")
    got = read_inverter(li.port)
    assert got["fault"] == "inverter_alarm:OVER_TEMP"


def test_inverter_own_droop_is_detected(live_inverter):
    li = live_inverter()
    li.inv.map.set(711, "Ena", 1)
    assert read_inverter(li.port)["droop"] is True


def test_setpoint_goes_through_704_with_reversion(live_inverter):
    li = live_inverter(wset_sf=-1)
    got = run_mp("sunspec_cases", "setpoint", li.port).json()
    # the first write reads the control block and writes it (2 transactions),
    # later ones write only WSet
    assert got == [2, 1]
    mp = li.inv.map
    assert mp.get(704, "WSetEna") == 1 and mp.get(704, "WSetMod") == 1
    assert mp.get(704, "WSetRvrt") == 0 and mp.get(704, "WSetRvrtTms") == 5
    assert mp.get(704, "WSetEnaRvrt") == 1
    # last write: ev_w +2500 -> SunSpec WSet -2500 W, in units of 0.1 W
    assert mp.get(704, "WSet") == -25000
    writes = [w for _, w, *_ in li.inv.writes]
    assert writes[-2:] == [3000, -2500]


def test_inverter_reverts_to_zero_when_controller_goes_silent(live_inverter):
    import time
    li = live_inverter(ramp_w_per_s=1e6)
    run_mp("sunspec_cases", "setpoint_then_silent", li.port)
    time.sleep(0.3)
    assert li.inv.ev_w == pytest.approx(4000, abs=1)
    time.sleep(2.5)
    assert li.inv.reversions >= 1
    assert li.inv.ev_w == 0


def test_read_point_applies_scale_factor_with_units(live_inverter):
    li = live_inverter(hz_sf=-2, soc_pct=55.5)
    li.inv.grid.set_override_hz(50.02)
    li.call(li.inv.step, li.clock.now())
    got = run_mp("sunspec_cases", "read_points", li.port).json()
    assert got[0][0] == pytest.approx(50.02) and got[0][1] == "Hz"
    assert got[1] == [55.5, "%"]
    assert got[2][1] == "s"


def test_not_a_sunspec_device(tmp_path):
    from tools.bench_modbus import ServerProcess, free_port
    with ServerProcess(free_port()) as srv:
        res = run_mp("sunspec_cases", "not_sunspec", srv.port)
    assert res.lines()[-1].startswith("NotSunSpec no SunS marker at 40000, 0, 50000")
