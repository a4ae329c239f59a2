"""SunSpec 714 (DER DC measurement) on the unix port, against the pymodbus
simulated inverter (tools/sim: register map laid out from pysunspec2's model
JSON, DC values from its battery model), and the Meas record: after a
refresh it holds only the attributes Meas.__init__ declares."""
import time

import pytest

from conftest import run_mp
from tools.sim.inverter import DC_MODELS as WITH_714
DC = ("dc_v", "dc_a", "dc_w")


def read_inverter(port):
    return run_mp("sunspec714_read", port).json()


def run_at(li, grid_w):
    """Have the simulated inverter inject grid_w (SunSpec sign: - charges the
    car) and settle there."""
    inv = li.inv

    def command():
        inv.map.set(704, "WSetMod", inv.map.symbol(704, "WSetMod", "WATTS"))
        inv.map.set(704, "WSet", round(grid_w / 10 ** inv.map.get(704, "WSet_SF")))
        inv.map.set(704, "WSetEna", inv.map.symbol(704, "WSetEna", "ENABLED"))

    li.call(command)
    deadline = time.monotonic() + 5
    while abs(inv.ev_w + grid_w) > 0.5 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert abs(inv.ev_w + grid_w) <= 0.5, inv.ev_w


def sim_dc(li):
    """What the simulator publishes now: (V, A, W), SunSpec sign."""
    m = li.inv.map
    port = li.inv._car_port
    return (m.get_scaled(714, "Prt.DCV", port), m.get_scaled(714, "Prt.DCA", port),
            m.get_scaled(714, "Prt.DCW", port))


@pytest.mark.parametrize("grid_w", [-6000, 4500])
def test_714_values_are_read_scaled_and_signed_into_the_car(live_inverter, grid_w):
    # non-default scale factors everywhere 714 has one
    li = live_inverter(models=WITH_714, soc_pct=55.0, ramp_w_per_s=1e6, w_sf=1, dca_sf=-1, dcv_sf=-2)
    run_at(li, grid_w)
    got = read_inverter(li.port)
    v, a, w = sim_dc(li)
    assert got["models"] == sorted(WITH_714)
    assert got["sf"] == {"DCA_SF": -1, "DCV_SF": -2, "DCW_SF": 1}
    assert got["dc_port"] == 0 and got["dc_span"] == [30, True]  # Prt[0].DCA, DCV, DCW
    # raw registers hold 0.01 V, 0.1 A, 10 W; meas holds V, A, W, + into the car
    assert li.inv.map.get(714, "Prt.DCV", 0) == round(v * 100)
    assert got["dc_v"] == pytest.approx(v, abs=1)
    assert 280 <= got["dc_v"] <= 410  # the sim pack's OCV at 55 %
    assert got["dc_w"] == -grid_w == got["ev_w"]
    assert got["dc_a"] == pytest.approx(-a, abs=1)
    assert got["dc_a"] == pytest.approx(-grid_w / got["dc_v"], abs=1)
    assert (got["dc_a"] > 0) == (grid_w < 0)  # charging: current into the car
    # one more read per tick, of 3 registers
    assert got["refresh_transactions"] == 3
    assert got["needed"][-1] == [3, 3]


def test_714_costs_one_read_at_discovery_and_one_per_refresh(live_inverter):
    without = read_inverter(live_inverter().port)
    # five ports: their types come in the same single read as the scale factors
    li = live_inverter(models=WITH_714, group_counts={714: {"Prt": 5}}, dc_port_types=("PV",) * 4 + ("EV",))
    got = read_inverter(li.port)
    # one more model header to walk, one read of 714 [4..120]
    assert got["discover_transactions"] == without["discover_transactions"] + 2
    assert got["refresh_transactions"] == without["refresh_transactions"] + 1
    assert got["dc_port"] == 4


def test_inverter_without_714_leaves_dc_values_none(live_inverter):
    li = live_inverter(ramp_w_per_s=1e6)
    run_at(li, -3000)
    got = read_inverter(li.port)
    assert 714 not in got["models"]
    assert [got[k] for k in DC] == [None, None, None]
    assert got["dc_span"] is None and got["refresh_transactions"] == 2
    assert got["ev_w"] == 3000


@pytest.mark.parametrize("types,port", [(("PV", "ESS", "EV"), 2), (("PV", "ESS", "PV"), 1),
                                        (("BIDIR", "PV", "PV"), 0)])
def test_the_cars_port_is_chosen_by_type(live_inverter, types, port):
    # EV before ESS before BIDIR; PV ports are never the car
    li = live_inverter(models=WITH_714, group_counts={714: {"Prt": 3}},
                       dc_port_types=types, ramp_w_per_s=1e6)
    run_at(li, -2000)
    got = read_inverter(li.port)
    assert got["dc_port"] == port and got["dc_span"] == [20 + port * 25 + 10, True]
    assert got["dc_w"] == 2000 and got["dc_v"] > 0 and got["dc_a"] > 0


def test_pv_only_ports_are_not_the_car(live_inverter):
    li = live_inverter(models=WITH_714, dc_port_types=("PV",))
    got = read_inverter(li.port)
    assert got["dc_port"] is None and got["dc_span"] is None
    assert [got[k] for k in DC] == [None, None, None]
    assert got["refresh_transactions"] == 2


def test_no_ports_listed_uses_the_totals_without_a_voltage(live_inverter):
    li = live_inverter(models=WITH_714, group_counts={714: {"Prt": 0}}, ramp_w_per_s=1e6)
    run_at(li, 3000)
    got = read_inverter(li.port)
    assert got["dc_port"] is None and got["dc_span"] == [5, False]
    assert got["dc_v"] is None
    assert got["dc_w"] == -3000 and got["dc_a"] < 0
    assert got["needed"][-1] == [2, 2]


def test_not_implemented_714_points_are_unknown(live_inverter):
    li = live_inverter(models=WITH_714, omit_points=[(714, "DCV_SF"), (714, "Prt[0].DCW")])
    got = read_inverter(li.port)
    assert got["dc_v"] is None and got["dc_w"] is None
    assert got["dc_a"] is not None


@pytest.mark.parametrize("models", [WITH_714, (1, 701, 702, 704, 713, 715, 711), (1, 701, 704)])
def test_refresh_sets_only_attributes_meas_declares(live_inverter, models):
    got = read_inverter(live_inverter(models=models).port)
    assert got["attrs"] == got["declared"], set(got["attrs"]) ^ set(got["declared"])
    assert set(DC) <= set(got["declared"])


def test_the_simulators_dc_side_follows_its_battery():
    from tools.sim.clock import WarpClock
    from tools.sim.inverter import SimInverter

    volts = []
    for soc in (0.0, 10.0, 50.0, 90.0, 100.0):
        inv = SimInverter(WarpClock(), models=WITH_714, soc_pct=soc)
        inv.ev_w = 7000.0  # charging: DER sign negative
        inv._publish(0.0)
        m = inv.map
        v, a, w = (m.get_scaled(714, "Prt." + n, 0) for n in ("DCV", "DCA", "DCW"))
        assert v == pytest.approx(inv.battery.ocv_v(), abs=0.1)
        assert w == -7000 and m.get_scaled(714, "DCW") == -7000
        assert a == pytest.approx(w / v, abs=0.01) and m.get_scaled(714, "DCA") == a
        volts.append(v)
    assert volts == sorted(volts) and 250 < volts[0] < volts[-1] < 420  # a 96s pack's OCV
