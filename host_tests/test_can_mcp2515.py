"""MCP2515 driver (firmware/v2g/can/mcp2515.py) against a register-level model
of the chip, on the unix port.

The model (host_tests/mp/can_mcp2515_model.py, MicroPython) is what the
board would hand the driver: an SPI object and a CS pin object (plus the
INT pin). It decodes the SPI
instruction set byte by byte between CS edges (RESET, READ, WRITE, BIT
MODIFY, READ STATUS, RX STATUS, READ RX BUFFER, LOAD TX BUFFER, RTS), keeps
the register file with the data sheet's access rules (configuration-only
registers, read-only bits, CANSTAT following CANCTRL a read later), and plays
the bus side: acceptance masks and filters, RX buffers with rollover and
overflow flags, transmission of requested buffers by priority, TEC/REC with
the error-state flags and bus off. It never allocates on the SPI path, so the
driver can be run under micropython.heap_lock().
"""
import json

import pytest

from conftest import ROOT, run_mp

@pytest.fixture
def run():
    """A case of host_tests/mp/can_mcp2515_cases.py -> what it returned."""
    def go(case, *args, stdin=None):
        return run_mp("can_mcp2515_cases", case, *args, stdin=stdin).json()

    return go


def decode_cnf(cnf1, cnf2, cnf3):
    brp = cnf1 & 0x3F
    sjw = (cnf1 >> 6) + 1
    assert cnf2 & 0x80, "BTLMODE: PS2 must come from CNF3"
    ps1 = ((cnf2 >> 3) & 7) + 1
    prseg = (cnf2 & 7) + 1
    ps2 = (cnf3 & 7) + 1
    return brp, sjw, prseg, ps1, ps2


# ------------------------------------------------------------ bit timing


@pytest.mark.parametrize("osc_hz,bitrate", [(8_000_000, 500_000), (8_000_000, 250_000),
                                            (16_000_000, 500_000), (16_000_000, 250_000)])
def test_bit_timing_registers_are_exact_and_legal(run, osc_hz, bitrate):
    got = run("bit_timing_registers_are_exact_and_legal", osc_hz, bitrate)
    cnf1, cnf2, cnf3 = got["cnf"]
    assert got["regs"] == [cnf1, cnf2, cnf3], "CNF1/2/3 written to the chip as computed"
    assert got["viol"] == 0 and got["mode"] == 0x00
    brp, sjw, prseg, ps1, ps2 = decode_cnf(cnf1, cnf2, cnf3)
    nq = 1 + prseg + ps1 + ps2
    # data sheet rules
    assert 8 <= nq <= 25
    assert 1 <= prseg <= 8 and 1 <= ps1 <= 8 and 2 <= ps2 <= 8
    assert sjw <= min(4, ps1, ps2)
    assert prseg + ps1 >= ps2
    # exactly the bit rate: bit = nq * 2 * (brp + 1) / osc
    assert osc_hz == bitrate * nq * 2 * (brp + 1)
    sample_point = (1 + prseg + ps1) / nq
    assert 0.75 <= sample_point <= 0.875


def test_known_bit_timing_values(run):
    got = run("known_bit_timing_values")
    # 8 TQ bits: sync 1 + PRSEG 3 + PS1 2 + PS2 2, SJW 2, sampled at 75 %;
    # 16 TQ bits: 1 + 7 + 6 + 2, SJW 2, sampled at 87.5 %. 16 MHz at 250k
    # needs the prescaler (BRP 1) to stay within 25 TQ.
    assert got == [[0x40, 0x8A, 0x01], [0x40, 0xAE, 0x01], [0x40, 0xAE, 0x01], [0x41, 0xAE, 0x01]]


@pytest.mark.parametrize("osc_hz,bitrate", [(8_000_000, 1_000_000), (8_000_000, 83_333),
                                            (16_000_000, 2_000_000), (4_000_000, 500_000),
                                            (8_000_000, 0)])
def test_impossible_bit_timing_is_refused(run, osc_hz, bitrate):
    got = run("impossible_bit_timing_is_refused", osc_hz, bitrate)
    assert got == ["ValueError", "ValueError", 0], "refused before touching the chip"


# ------------------------------------------------------------ init


def test_init_resets_configures_and_goes_normal(run):
    got = run("init_resets_configures_and_goes_normal")
    assert got["reset"] == 1
    assert got["mode"] == 0x00, "normal mode"
    assert got["inte"] == 0x23, "RX0IE | RX1IE | ERRIE drive the INT pin"
    assert got["intf"] == 0
    assert got["rxb0"] & 0x64 == 0x64, "RXB0: any frame, rollover into RXB1"
    assert got["rxb1"] & 0x60 == 0x60
    assert got["viol"] == 0 and got["cfgviol"] == 0 and got["cs_idle"] == 1
    assert got["state"] == "active"


def test_missing_chip_is_an_oserror(run):
    got = run("missing_chip_is_an_oserror")
    assert got == ["OSError 19", 1], "ENODEV, and CS released"


def test_listen_and_loopback_modes(run):
    got = run("listen_and_loopback_modes")
    assert got == [0x60, 0x40, True, 0x123, [1, 2], "ValueError"]


# ------------------------------------------------------------ TX


def test_tx_loads_buffer_and_requests_send(run):
    got = run("tx_loads_buffer_and_requests_send")
    assert got["ok"] is True and got["load"] == 1 and got["rts"] == 1
    ctrl, sidh, sidl, eid8, eid0, dlc, *data = got["txb2"]
    assert ctrl & 0x08, "TXREQ set by RTS"
    assert (sidh << 3 | sidl >> 5) == 0x108 and not sidl & 0x08, "standard ID in SIDH/SIDL, EXIDE clear"
    assert dlc == 8 and data == [0x01, 0xF4, 0x01, 0x0F, 0xB3, 0x01, 0x00, 0x00]
    assert got["sent"] == [[0x108, False, False, [1, 0xF4, 1, 0x0F, 0xB3, 1, 0, 0]],
                           [0x1ABCDEF5, True, False, [0xAA]]]
    assert got["tx_frames"] == 2 and got["viol"] == 0


def test_tx_buffers_full_and_queue_order(run):
    got = run("tx_buffers_full_and_queue_order")
    assert got["res"] == [True, True, True, False], "three TX buffers, then 'full'"
    assert got["after"] is True
    assert got["order"] == [0x100, 0x101, 0x102, 0x200], "frames queued together leave in queue order"
    assert got["tx"] == 4


def test_send_rejects_bad_frames(run):
    got = run("send_rejects_bad_frames")
    assert got == [["ValueError", "ValueError", "ValueError"], 0]


# ------------------------------------------------------------ RX


def test_rx_both_buffers_rollover_and_overflow(run):
    got = run("rx_both_buffers_rollover_and_overflow")
    assert got["where"] == [0, 1, -2], "RXB0, rollover to RXB1, then lost"
    assert got["got"][:2] == [[0x100, False, False, 8, [0, 0, 0, 0, 0xB3, 1, 0x64, 0]],
                              [0x102, False, False, 8, [2, 0x9A, 1, 0, 0, 0xC8, 0x49, 0]]]
    assert got["got"][2:] == [[0x1FFFFFFF, True, True, 4, []], [0x7FF, False, True, 2, []]]
    assert got["ovf"] == 1, "the lost frame is counted"
    assert got["eflg"] & 0xC0 == 0, "overflow flags cleared after counting"
    assert got["intf"] & 0x23 == 0
    assert got["rx"] == 4
    assert got["read_rxb"] == [2, 2], "one READ RX BUFFER per frame, from both buffers"


def test_rx_without_rollover_flags_rx0ovr(run):
    got = run("rx_without_rollover_flags_rx0ovr")
    assert got == [-2, 1, 1]


def test_dlc_above_8_reads_8_bytes(run):
    got = run("dlc_above_8_reads_8_bytes")
    assert got == [8, "ABCDEFGH"]


# ------------------------------------------------------------ filters


def test_filters_chademo_ids_all_get_the_rollover_path(run):
    got = run("filters_chademo_ids_all_get_the_rollover_path")
    for cid in ("0x100", "0x101", "0x102", "0x110", "0x200", "0x201"):
        assert got["hw"][cid] == 0 and got["seen"][cid], cid
    assert got["hw"]["0x103"] == 0 and not got["seen"]["0x103"], \
        "admitted by the shared mask, dropped by the software filter"
    for cid in ("0x108", "0x300", "0x0", "0x7ff", "ext"):
        assert got["hw"][cid] == -1, f"{cid} kept out by the hardware"
        assert not got["seen"].get(cid), cid
    for a_where, b_where, order in got["burst"]:
        assert (a_where, b_where) == (0, 1), "RXB0 then rollover into RXB1"
        assert len(order) == 2
    assert got["mode"] == 0 and got["cfgviol"] == 0, "written in configuration mode, back to normal"
    assert got["rxb0"] & 0x60 == 0 and got["rxb1"] & 0x60 == 0, "filters on"
    assert got["rxb0"] & 0x04, "rollover kept"


def test_filters_many_ids_and_back_to_all(run):
    got = run("filters_many_ids_and_back_to_all")
    for cid in ("0x100", "0x103", "0x200", "0x203", "0x350", "0x353"):
        assert got["hw"][cid] >= 0 and got["sw"][cid], cid
    for cid in ("0x104", "0x204", "0x300", "0x7ff"):
        assert not got["sw"][cid], f"{cid} never reaches the caller"
    assert got["one"] == [0, -1], "a single ID is matched exactly"
    assert got["after"] == 0 and got["rxb0"] & 0x60 == 0x60, "None = accept everything again"


def test_filter_ids_are_validated(run):
    got = run("filter_ids_are_validated")
    assert got == "ValueError"


# ------------------------------------------------------------ errors


def test_error_states_bus_off_and_recovery(run):
    got = run("error_states_bus_off_and_recovery")
    assert got["states"] == ["active", "warning", "passive", "passive", "bus_off", "active"]
    assert got["tec_rec"] == [130, 0]
    assert got["send_off"] is False, "no frame is queued while bus off"
    assert got["offs"] == 1 and got["offs2"] == 1
    assert got["after"] == [0, 0], "recovery clears TEC/REC"
    assert got["filt"] is True, "filters survive the recovery reset"
    assert got["send_on"] is True
    assert got["errors"] == 1, "MERRF counted"
    assert got["viol"] == 0


# ------------------------------------------------------------ INT pin, ring, IRQ


def test_int_pin_makes_idle_polls_free(run):
    got = run("int_pin_makes_idle_polls_free")
    assert got == [0, True, 0x102], "no SPI traffic while INT is high"


def test_drain_ring_keeps_order_and_defers_inside_transactions(run):
    got = run("drain_ring_keeps_order_and_defers_inside_transactions")
    assert got["order"] == [0x100 + i for i in range(6)]
    assert got["viol"] == 0, "the deferred drain never interleaved with a transaction"
    assert got["ring_after_send"] == 1, "the drain ran right after the transaction"
    assert got["n"] == 10, "8 in the ring + 2 still in the chip's buffers"
    assert got["ring_ovf"] >= 1


# ------------------------------------------------------------ allocation


def test_no_heap_allocation_per_frame(run):
    got = run("no_heap_allocation_per_frame")
    assert got[0] == "ok"
    assert got[1] == got[2] - 2 == 2000 + 1600, "every accepted frame arrived (0x300 filtered out)"
    assert got[3] >= 2000


# ------------------------------------------------------------ hal.can_build


def test_vehicle_bus_builds_the_mcp2515_from_the_board_config(run):
    board = json.loads((ROOT / "board_configs" / "rp2040_pico_w.json").read_text())
    got = run("vehicle_bus_builds_the_mcp2515_from_the_board_config", stdin=json.dumps(board))
    c = board["can"]
    made = [tuple(x) for x in got["made"]]
    assert ("SPI", c["spi"], c["spi_baud"], 0, 0, c["sck"], c["mosi"], c["miso"]) in made
    assert ("Pin", c["cs"], 1, None, 1) in made, "CS an output, idle high"
    assert ("Pin", c["int"], 0, 2, None) in made, "INT an input with pull-up"
    assert ("irq", c["int"], 4) in made, "INT falling edge drains the chip"
    assert got["type"] == "MCP2515" and got["mode"] == 0
    assert got["cnf"] == [0x40, 0x8A, 0x01], "8 MHz crystal, 500 kbit/s from the board config"
    assert got["ok"] and got["id"] == 0x102


def test_vehicle_bus_refuses_a_board_without_can(run):
    got = run("vehicle_bus_refuses_a_board_without_can")
    assert got == "ValueError"


# ------------------------------------------------------------ machine.CAN adapter


def test_machine_can_adapter(run):
    got = run("machine_can_adapter")
    assert got["filters0"] is None, "machine.CAN receives nothing until filters are set"
    assert got["send"] == [True, True, True, False], "a full queue is False, not an exception"
    assert got["tx"] == [[0x108, "0102", 0], [0x18DAF110, "", 2], [0x7FF, "3132333435363738", 0]]
    assert got["got"] == [[0x102, False, False, 8, "029a010000c84900"], [0x1ABCDEF, True, False, 1, "aa"],
                          [0x123, False, True, 2, "0000"], [0x7FF, False, False, 0, ""]]
    assert got["ovf"] == 1
    assert got["states"] == ["active", "warning", "passive", "bus_off", "bus_off"]
    assert got["send_off"] is False
    assert got["after"] == ["active", 1, 1]
    assert got["filters"] == [[0x100, 0x7FF, 0], [0x102, 0x7FF, 0]]
    assert got["filters6"] is None, "beyond FILTERS_MAX: take all, filter in software"
    assert got["soft"] == [True, 0x201]


def test_machine_can_adapter_allocates_nothing(run):
    got = run("machine_can_adapter_allocates_nothing")
    assert got == ["ok", 2000]
