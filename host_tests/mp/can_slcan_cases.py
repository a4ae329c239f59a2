# test_can_slcan.py's MicroPython half: the SLCAN host v2g.can.slcan over a
# pty or TCP (host_tests/mp/cases.py). The test plays the adapter (or
# python-can) on the other end while the case runs.
import gc
import time

import cases
import micropython
from v2g.can import Frame
from v2g.can.slcan import SlcanBus, open_pty


def frames_until(bus, want, ms):
    f = Frame()
    got = []
    t0 = time.ticks_ms()
    while len(got) < want and time.ticks_diff(time.ticks_ms(), t0) < ms:
        if bus.recv_into(f):
            got.append([f.id, f.ext, f.rtr, f.dlc, bytes(f.data[:f.dlc]).hex()])
        else:
            time.sleep_ms(1)
    return got


def counters(bus):
    return {"errors": bus.errors, "nacks": bus.nacks, "rx": bus.rx_frames, "tx": bus.tx_frames,
            "ovf": bus.rx_overflows, "offs": bus.bus_off_count, "state": bus.state()}


def wait_bus_off(bus, ms):
    f = Frame()
    t0 = time.ticks_ms()
    while bus.state() != "bus_off" and time.ticks_diff(time.ticks_ms(), t0) < ms:
        bus.recv_into(f)
        time.sleep_ms(5)


def transmit_receive_garbage(path):
    bus = SlcanBus(open_pty(path))
    sent = [bus.send(0x108, b"\x01\xf4\x01\x0f\xb3\x01\x00\x00"),
            bus.send(0x1ABCDEF5, b"\xaa\xbb", ext=True),
            bus.send(0x7FF, b"")]
    got = frames_until(bus, 6, 5000)
    extra = frames_until(bus, 1, 300)  # the garbage that follows the last frame
    c = counters(bus)
    return {"sent": sent, "got": got, "extra": extra, "c": c}


def status_flags_and_filters(path):
    bus = SlcanBus(open_pty(path))
    bus.set_filters([0x102, 0x200])
    states = [bus.state()]
    bus.request_status()
    frames_until(bus, 1, 300)
    states.append(bus.state())
    got = frames_until(bus, 3, 3000)
    states.append(bus.state())
    return {"states": states, "got": got, "c": counters(bus)}


def missing_device(path):
    bus = SlcanBus(open_pty(path))
    r = [bus.state(), bus.send(0x100, b""), bus.recv_into(Frame())]
    bus.recover()
    r.append(bus.state())
    return {"r": r, "offs": bus.bus_off_count}


def hang_up(path):
    bus = SlcanBus(open_pty(path))
    got = frames_until(bus, 1, 5000)
    wait_bus_off(bus, 5000)
    return {"got": got, "state": bus.state(), "offs": bus.bus_off_count, "send": bus.send(0x100, b"")}


def echo(path):
    # sends two frames, then echoes every frame back with bit 10 set
    # (extended: bit 28)
    bus = SlcanBus(open_pty(path))
    bus.send(0x108, b"\x01\xf4\x01\x0f\xb3\x01\x00\x00")
    bus.send(0x18DAF110, b"\x02\x10\x03", ext=True)
    f = Frame()
    n = 0
    t0 = time.ticks_ms()
    while n < 40 and time.ticks_diff(time.ticks_ms(), t0) < 8000:
        if bus.recv_into(f):
            while not bus.send(f.id | (0x10000000 if f.ext else 0x400), f.data[:f.dlc], f.ext):
                time.sleep_ms(1)  # the previous line is still on its way
            n += 1
        else:
            time.sleep_ms(1)
    return {"n": n, "c": counters(bus)}


def flood(path, want):
    # prints "ready" once warmed up, then counts WANT frames under heap_lock
    bus = SlcanBus(open_pty(path))
    want = int(want)
    f = Frame()
    for _ in range(3):
        bus.recv_into(f)  # nothing fed yet: the test waits for "ready"
    gc.collect()
    n = 0
    r = "ok"
    print("ready")
    t0 = time.ticks_ms()
    micropython.heap_lock()
    try:
        while n < want and time.ticks_diff(time.ticks_ms(), t0) < 12000:
            if bus.recv_into(f):
                n += 1
    except MemoryError:
        r = "allocated"
    micropython.heap_unlock()
    dt = time.ticks_diff(time.ticks_ms(), t0)
    return {"r": r, "n": n, "ms": dt, "c": counters(bus)}


def tcp_loss_and_recover(port):
    from v2g.hal.can_build import open_slcan_tcp

    bus = SlcanBus(open_slcan_tcp("127.0.0.1", int(port)))
    out = []
    for _ in range(2):
        got = frames_until(bus, 1, 5000)
        wait_bus_off(bus, 5000)
        out.append([got, bus.state()])
        bus.recover()
    return {"out": out, "offs": bus.bus_off_count}


def vehicle_bus_links(path, port):
    from v2g.config import parse_link
    from v2g.hal.can_build import vehicle_bus

    board = {"can": None}
    pty = vehicle_bus({"vehicle": {"link_parsed": parse_link("vehicle.link", "slcan:" + path)}}, board)
    tcp = vehicle_bus({"vehicle": {"link_parsed": parse_link("vehicle.link", "slcan-tcp:127.0.0.1:" + port)}},
                      board)
    return [type(pty).__name__, pty.state(), type(tcp).__name__, tcp.state()]


cases.main(globals())
