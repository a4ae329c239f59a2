# test_can_mcp2515.py's MicroPython half: the MCP2515 driver against the
# chip's model (can_mcp2515_model.py), hal.can_build with a fake machine
# module, and the machine.CAN adapter against a fake machine.CAN
# (host_tests/mp/cases.py).
import json

import cases
import micropython
from can_mcp2515_model import Model
from v2g.can import Frame
from v2g.can.mcp2515 import MCP2515, bit_timing


def bit_timing_registers_are_exact_and_legal(osc_hz, bitrate):
    osc_hz, bitrate = int(osc_hz), int(bitrate)
    m = Model()
    bus = MCP2515(m.spi, m.cs, osc_hz=osc_hz, bitrate=bitrate)
    r = m.regs
    return {"cnf": list(bit_timing(osc_hz, bitrate)), "regs": [r[0x2A], r[0x29], r[0x28]],
            "mode": m.mode(), "viol": m.config_violations}


def known_bit_timing_values():
    return [list(bit_timing(o, b)) for o, b in
            ((8000000, 500000), (8000000, 250000), (16000000, 500000), (16000000, 250000))]


def impossible_bit_timing_is_refused(osc_hz, bitrate):
    osc_hz, bitrate = int(osc_hz), int(bitrate)
    try:
        bit_timing(osc_hz, bitrate)
        r = "accepted"
    except ValueError:
        r = "ValueError"
    m = Model()
    try:
        MCP2515(m.spi, m.cs, osc_hz=osc_hz, bitrate=bitrate)
        r2 = "accepted"
    except ValueError:
        r2 = "ValueError"
    return [r, r2, m.transactions]


def init_resets_configures_and_goes_normal():
    m = Model()
    m.mode_lag = 3  # the chip takes a few reads to change mode: the driver must poll
    bus = MCP2515(m.spi, m.cs, osc_hz=16000000, bitrate=500000)
    r = m.regs
    return {"reset": m.instr_hist[0xC0], "mode": m.mode(), "inte": r[0x2B], "intf": r[0x2C],
            "rxb0": r[0x60], "rxb1": r[0x70], "viol": m.violations, "cfgviol": m.config_violations,
            "cs_idle": m.cs.value(), "state": bus.state()}


def missing_chip_is_an_oserror():
    m = Model(absent=True)
    try:
        MCP2515(m.spi, m.cs)
        r = "ok"
    except OSError as e:
        r = "OSError %d" % e.errno
    return [r, m.cs.value()]


def listen_and_loopback_modes():
    m = Model()
    b = MCP2515(m.spi, m.cs, mode="listen")
    l = m.mode()
    m2 = Model()
    b2 = MCP2515(m2.spi, m2.cs, mode="loopback")
    b2.send(0x123, b"\x01\x02")
    m2.transmit()
    f = Frame()
    ok = b2.recv_into(f)
    try:
        MCP2515(Model().spi, Model().cs, mode="fast")
        bad = "accepted"
    except ValueError:
        bad = "ValueError"
    return [l, m2.mode(), ok, f.id, list(f.data[:f.dlc]), bad]


def tx_loads_buffer_and_requests_send():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    ok = bus.send(0x108, b"\x01\xf4\x01\x0f\xb3\x01\x00\x00")
    r = m.regs
    txb2 = list(r[0x50:0x5E])
    rts = m.instr_hist[0x84]
    load = m.instr_hist[0x44]
    n = m.transmit()
    ok2 = bus.send(0x1ABCDEF5, b"\xAA", ext=True)
    m.transmit()
    return {"ok": ok, "txb2": txb2, "rts": rts, "load": load, "n": n,
            "sent": [[s[0], s[1], s[2], list(s[3])] for s in m.sent],
            "tx_frames": bus.tx_frames, "intf": r[0x2C], "viol": m.violations}


def tx_buffers_full_and_queue_order():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    res = [bus.send(0x100 + i, bytes([i])) for i in range(4)]
    m.transmit()
    after = bus.send(0x200, b"")
    m.transmit()
    return {"res": res, "after": after, "order": [s[0] for s in m.sent], "tx": bus.tx_frames}


def send_rejects_bad_frames():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    out = []
    for args in ((0x800, b""), (0x100, b"123456789"), (-1, b"")):
        try:
            bus.send(*args)
            out.append("sent")
        except ValueError:
            out.append("ValueError")
    return [out, bus.tx_frames]


def rx_both_buffers_rollover_and_overflow():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    f = Frame()
    where = [m.inject(0x100, b"\x00\x00\x00\x00\xB3\x01\x64\x00"),
             m.inject(0x102, b"\x02\x9A\x01\x00\x00\xC8\x49\x00"),
             m.inject(0x12345678, b"\x09", ext=True)]
    got = []
    while bus.recv_into(f):
        got.append([f.id, f.ext, f.rtr, f.dlc, list(f.data[:f.dlc])])
    eflg_after = m.regs[0x2D]
    # an extended remote frame and a standard remote frame
    m.inject(0x1FFFFFFF, b"", 4, ext=True, rtr=True)
    m.inject(0x7FF, b"", 2, rtr=True)
    while bus.recv_into(f):
        got.append([f.id, f.ext, f.rtr, f.dlc, []])
    return {"where": where, "got": got, "ovf": bus.rx_overflows, "eflg": eflg_after,
            "intf": m.regs[0x2C], "rx": bus.rx_frames, "read_rxb": [m.instr_hist[0x90], m.instr_hist[0x94]]}


def rx_without_rollover_flags_rx0ovr():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    m.regs[0x60] &= ~0x04  # a chip left without BUKT (not what the driver sets)
    m.inject(0x100, b"\x01")
    r = m.inject(0x101, b"\x02")
    f = Frame()
    n = 0
    while bus.recv_into(f):
        n += 1
    return [r, n, bus.rx_overflows]


def dlc_above_8_reads_8_bytes():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    m.inject(0x321, b"ABCDEFGH")
    m.regs[0x65] = 0x0F  # DLC 15 on the wire: still 8 data bytes
    f = Frame()
    bus.recv_into(f)
    return [f.dlc, bytes(f.data).decode()]


def filters_chademo_ids_all_get_the_rollover_path():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    ids = (0x100, 0x101, 0x102, 0x110, 0x200, 0x201)
    bus.set_filters(ids)
    hw = {}
    seen = {}
    f = Frame()
    for cid in (0x100, 0x101, 0x102, 0x110, 0x200, 0x201, 0x103, 0x108, 0x300, 0x000, 0x7FF):
        hw[hex(cid)] = m.inject(cid, b"\x55\xAA\x00")  # data must not matter for standard frames
        seen[hex(cid)] = bus.recv_into(f) and f.id == cid
        while bus.recv_into(f):
            pass
    hw["ext"] = m.inject(0x100 << 18, b"", ext=True)  # same ID bits, extended: rejected
    # a car's burst while nobody reads: every ID has two buffers (RXB0 + rollover)
    burst = []
    for a, b in ((0x100, 0x101), (0x102, 0x200), (0x110, 0x201), (0x201, 0x100)):
        burst.append([m.inject(a, b"\x01"), m.inject(b, b"\x02")])
        got = []
        while bus.recv_into(f):
            got.append(f.id)
        burst[-1].append(got)
    return {"hw": hw, "seen": seen, "burst": burst, "mode": m.mode(),
            "cfgviol": m.config_violations, "rxb0": m.regs[0x60], "rxb1": m.regs[0x70]}


def filters_many_ids_and_back_to_all():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    ids = (0x100, 0x101, 0x102, 0x103, 0x200, 0x201, 0x202, 0x203, 0x350, 0x351, 0x352, 0x353)
    bus.set_filters(ids)
    f = Frame()
    hw = {}
    sw = {}
    for cid in ids + (0x104, 0x204, 0x300, 0x7FF):
        hw[hex(cid)] = m.inject(cid, b"\x01")
        sw[hex(cid)] = bus.recv_into(f) and f.id == cid
        while bus.recv_into(f):
            pass
    bus.set_filters([0x123])
    one = [m.inject(0x123, b""), m.inject(0x124, b"")]
    while bus.recv_into(f):
        pass
    bus.set_filters(None)
    after = m.inject(0x555, b"")
    return {"hw": hw, "sw": sw, "one": one, "after": after, "rxb0": m.regs[0x60]}


def filter_ids_are_validated():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    try:
        bus.set_filters([0x100, 0x800])
        r = "accepted"
    except ValueError:
        r = "ValueError"
    return r


def error_states_bus_off_and_recovery():
    m = Model()
    bus = MCP2515(m.spi, m.cs)
    bus.set_filters((0x102,))
    states = [bus.state()]
    m.set_counters(100, 0); states.append(bus.state())
    m.set_counters(0, 130); states.append(bus.state())
    m.set_counters(130, 0); states.append(bus.state())
    tec_rec = list(bus.error_counters())
    m.tx_errors(20)  # TEC > 255: bus off
    f = Frame()
    bus.recv_into(f)  # ERRIF serviced here
    states.append(bus.state())
    send_off = bus.send(0x108, b"\x00")
    offs = bus.bus_off_count
    bus.recover()
    states.append(bus.state())
    after = list(bus.error_counters())
    filt = m.inject(0x103, b"") == -1 and m.inject(0x102, b"") >= 0
    send_on = bus.send(0x108, b"\x00")
    m.message_error()
    bus.recv_into(f)
    return {"states": states, "tec_rec": tec_rec, "send_off": send_off, "offs": offs,
            "after": after, "filt": filt, "send_on": send_on, "offs2": bus.bus_off_count,
            "errors": bus.errors, "viol": m.violations}


def int_pin_makes_idle_polls_free():
    m = Model()
    bus = MCP2515(m.spi, m.cs, int_pin=m.int_pin)
    f = Frame()
    t0 = m.transactions
    for _ in range(100):
        bus.recv_into(f)
    idle = m.transactions - t0
    m.inject(0x102, b"\x01")
    ok = bus.recv_into(f)
    return [idle, ok, f.id]


def drain_ring_keeps_order_and_defers_inside_transactions():
    m = Model()
    bus = MCP2515(m.spi, m.cs, int_pin=m.int_pin, rx_ring=8)
    f = Frame()
    # frames arrive faster than the main loop reads: the IRQ drains each into the ring
    for i in range(6):
        m.inject(0x100 + i, bytes([i]))
        bus.irq_handler(None)  # schedules the drain ...
        bus._drain_cb(0)  # ... which runs between bytecodes
    order = []
    while bus.recv_into(f):
        order.append(f.id)
    # a scheduled drain that lands in the middle of a send() transaction
    m.inject(0x1F0, b"\xEE")
    def hook():
        m.hook = None
        bus._drain_cb(0)
    m.hook = hook
    bus.send(0x108, b"\x00")
    ring_after_send = bus._ring_len
    bus.recv_into(f)
    # ring overflow: more frames than the ring holds
    for i in range(10):
        m.inject(0x200 + i, b"")
        bus.drain()
    n = 0
    while bus.recv_into(f):
        n += 1
    return {"order": order, "viol": m.violations, "ring_after_send": ring_after_send,
            "n": n, "ring_ovf": bus.ring_overflows,
            "rx_ovf": bus.rx_overflows}


def no_heap_allocation_per_frame():
    import gc
    m = Model()
    bus = MCP2515(m.spi, m.cs, int_pin=m.int_pin)
    bus.set_filters((0x100, 0x101, 0x102, 0x200))
    f = Frame()
    d = bytearray(b"\x02\x9A\x01\x00\x00\xC8\x49\x00")
    tx = bytearray(8)
    ids = (0x100, 0x101, 0x102, 0x200, 0x300)
    # warm up every path once
    m.inject(0x102, d, 8); bus.recv_into(f); bus.send(0x108, tx); m.transmit(False); bus.state()
    m.inject(0x102, d, 8); bus.drain(); bus.recv_into(f)
    gc.collect()
    n = 0
    micropython.heap_lock()
    try:
        for i in range(2000):
            d[6] = i & 0xFF
            m.inject(ids[i % 5], d, 8)
            m.inject(0x200, d, 8)
            if i & 1:
                bus.drain()
            while bus.recv_into(f):
                n += 1
            tx[0] = i & 0xFF
            bus.send(0x109, tx)
            m.transmit(False)
        r = "ok"
    except MemoryError:
        r = "allocated"
    micropython.heap_unlock()
    return [r, n, bus.rx_frames, m.sent_count]


def vehicle_bus_builds_the_mcp2515_from_the_board_config():
    # stdin: a board config (JSON)
    import sys

    from can_mcp2515_fake_machine import FakeMachine  # machine, before the HAL imports it
    from v2g.hal.can_build import vehicle_bus

    board = json.loads(sys.stdin.read())
    FakeMachine.board = board["can"]
    m = Model()
    FakeMachine.model = m
    bus = vehicle_bus({"vehicle": {"link_parsed": ("can",)}}, board)
    m.inject(0x102, b"\x01")
    f = Frame()
    ok = bus.recv_into(f)
    return {"made": FakeMachine.made, "type": type(bus).__name__, "cnf": [m.regs[0x2A], m.regs[0x29], m.regs[0x28]],
            "ok": ok, "id": f.id, "mode": m.mode()}


def vehicle_bus_refuses_a_board_without_can():
    from can_mcp2515_fake_machine import FakeMachine  # noqa: F401 - machine, before the HAL imports it
    from v2g.hal.can_build import vehicle_bus

    try:
        vehicle_bus({"vehicle": {"link_parsed": ("can",)}}, {"can": None})
        r = "built"
    except ValueError:
        r = "ValueError"
    return r


def machine_can_adapter():
    from can_mcp2515_fake_can import FakeCAN
    from v2g.can.machine_can import MachineCanBus

    can = FakeCAN()
    bus = MachineCanBus(can)
    out = {"filters0": can.filters}
    out["send"] = [bus.send(0x108, b"\x01\x02"), bus.send(0x18DAF110, b"", ext=True), bus.send(0x7FF, b"12345678"),
                   bus.send(0x100, b"")]
    out["tx"] = [[c, d.hex(), fl] for c, d, fl in can.tx]
    can.rx_i = 0
    can.rx = [(0x102, b"\x02\x9A\x01\x00\x00\xC8\x49\x00", 0, 0), (0x1ABCDEF, b"\xAA", 2, 2),
              (0x123, b"\x00\x00", 1, 0), (0x7FF, b"", 0, 0)]
    f = Frame()
    got = []
    while bus.recv_into(f):
        got.append([f.id, f.ext, f.rtr, f.dlc, bytes(f.data[:f.dlc]).hex()])
    out["got"] = got
    out["ovf"] = bus.rx_overflows
    states = []
    for st in (1, 2, 3, 0, 4):
        can.st = st
        states.append(bus.state())
    out["states"] = states
    out["send_off"] = bus.send(0x100, b"")
    bus.recover()
    out["after"] = [bus.state(), can.restarts, bus.bus_off_count]
    bus.set_filters([0x100, 0x102])
    out["filters"] = can.filters
    bus.set_filters([0x100, 0x101, 0x102, 0x110, 0x200, 0x201])
    out["filters6"] = can.filters
    can.rx_i = 0
    can.rx = [(0x300, b"\x01", 0, 0), (0x201, b"\x02", 0, 0)]
    out["soft"] = [bus.recv_into(f), f.id]
    return out


def machine_can_adapter_allocates_nothing():
    import gc

    from can_mcp2515_fake_can import FakeCAN
    from v2g.can.machine_can import MachineCanBus

    can = FakeCAN()
    can.log = False
    bus = MachineCanBus(can)
    frames = [(0x102, b"\x02\x9A\x01\x00\x00\xC8\x49\x00", 0, 0), (0x200, b"\xF0", 0, 0)]
    f = Frame()
    can.rx = list(frames)
    while bus.recv_into(f):
        pass
    can.rx = [frames[i & 1] for i in range(2000)]
    can.rx_i = 0
    tx = bytearray(8)
    gc.collect()
    n = 0
    micropython.heap_lock()
    try:
        for i in range(2000):
            while bus.recv_into(f):
                n += 1
            bus.send(0x109, tx)
        r = "ok"
    except MemoryError:
        r = "allocated"
    micropython.heap_unlock()
    return [r, n]


cases.main(globals())
