# test_chademo.py's MicroPython half (host_tests/mp/cases.py): the codec
# over the Leaf capture and the charger session ticked against a scripted
# car (host_tests/mp/chademo_fakebus.py). Capture files hold
# "t_ms id hex" lines.
import gc

import cases
import micropython
from chademo_fakebus import F100, F101, F200, FakeBus, car_cycle, charging_session, f102
from v2g.chademo import ChademoSession, EvData, decode, encode_108, encode_109, encode_208, encode_209
from v2g.clock import Clock


def _capture(path):
    d = bytearray(8)
    for line in open(path):
        t, cid, hx = line.split()
        b = bytes.fromhex(hx)
        for i in range(len(b)):
            d[i] = b[i]
        yield int(t), int(cid), d, len(b), hx


def _frames(bus):
    return [[c, d.hex()] for c, d in bus.sent]


# ------------------------------------------------------------ codec


def capture_through_decoders(path):
    ev = EvData()
    series = {"target_v": [], "max_batt_v": [], "status": [], "req_a": [], "dis_a": [], "min_dis_v": [],
              "cap_wh": [], "soc_raw": [], "proto": [], "max_time_s": [], "levels": []}

    def note(k, t, v):
        s = series[k]
        if not s or s[-1][1] != v:
            s.append([t, v])

    bad = 0
    for t, cid, d, n, _ in _capture(path):
        if decode(cid, d, n, ev) != 1:
            bad += 1
        note("target_v", t, ev.target_voltage_v)
        note("max_batt_v", t, ev.max_battery_voltage_v)
        note("status", t, ev.status)
        note("req_a", t, ev.charge_current_req_a)
        note("dis_a", t, ev.max_discharge_current_a)
        note("min_dis_v", t, ev.min_discharge_voltage_v)
        note("cap_wh", t, ev.battery_capacity_wh)
        note("soc_raw", t, ev.soc_raw)
        note("proto", t, ev.protocol)
        note("max_time_s", t, ev.max_charge_time_s)
        note("levels", t, [ev.min_discharge_level_raw, ev.max_charge_level_raw,
                           ev.level_cpct(ev.min_discharge_level_raw), ev.level_cpct(ev.max_charge_level_raw)])
    return {"series": series, "bad": bad, "seen": ev.seen}


def encoders():
    b = bytearray(8)
    out = []
    encode_108(b, True, 500, 15, 435)
    out.append(b.hex())
    encode_108(b, True, 500, 0, 435)
    out.append(b.hex())
    encode_109(b, 2, 0, 0, True, 0x20, 0xFF, 0xFF)
    out.append(b.hex())
    encode_109(b, 2, 374, 1, True, 0x05, 0xFF, 0x3C)
    out.append(b.hex())
    encode_109(b, 2, 376, 9, True, 0x25, 0xFF, 0x3C)
    out.append(b.hex())
    encode_208(b, 0, 500, 15, 250)
    out.append(b.hex())
    encode_208(b, 0, 500, 0, 0)
    out.append(b.hex())
    encode_209(b, 2, 0)
    out.append(b.hex())
    encode_209(b, 2, 5)
    out.append(b.hex())
    encode_208(b, 300, -5, 999, 70000)  # clamped, never wrapped
    out.append(b.hex())
    return out


def decoders_vs_dbc(path):
    ev = EvData()
    rows = []
    for _, cid, d, _, hx in _capture(path):
        decode(cid, d, 8, ev)
        if cid == 0x100:
            rows.append([cid, hx, ev.min_charge_current_a, ev.min_battery_voltage_v, ev.max_battery_voltage_v,
                         ev.charged_rate_ref])
        elif cid == 0x101:
            rows.append([cid, hx, ev.battery_capacity_wh, ev.est_charge_time_min])
        elif cid == 0x102:
            rows.append([cid, hx, ev.protocol, ev.target_voltage_v, ev.charge_current_req_a, ev.faults, ev.status,
                         ev.soc_raw])
        elif cid == 0x200:
            rows.append([cid, hx, ev.max_discharge_current_a, ev.min_discharge_voltage_v,
                         ev.min_discharge_level_raw, ev.max_charge_level_raw])
    return rows


# ------------------------------------------------------------ session over the capture


def session_replay(path, req_w):
    # one tick per captured frame, as a control loop faster than the car
    req_w = int(req_w)
    bus = FakeBus(256)
    s = ChademoSession(bus, Clock(), 500, 15)
    s.set_measured(0, 0)  # one measurement, stale a second later
    trace = []
    last = None
    for t, cid, d, n, _ in _capture(path):
        bus.push(cid, bytes(d[:n]))
        s.tick(t, req_w)
        bus.refill()
        k = [s.state, s.soc_cpct, s.charge_limit_w, s.discharge_limit_w, s.discharge_ok, s.must_stop,
             s.fault, s.stop_reason, s.stop_requested]
        if k != last:
            trace.append([t] + k)
            last = k
    return {"trace": trace, "sent": _frames(bus), "snap": s.snapshot()}


# ------------------------------------------------------------ stops and faults


def car_stop_request():
    out = []
    for status, name in ((0xC1 | 0x10, "stop_request"), (0xC1 | 0x02, "not_parked"), (0xC0, "disabled")):
        bus, s, t = charging_session()
        before = [s.state, s.must_stop]
        bus.push(0x102, f102(14, 0, status))
        s.tick(t + 10, 3000)
        out.append([name, before, s.state, s.must_stop, s.stop_requested, s.stop_reason, s.charge_limit_w])
    return out


def fault_bits():
    out = []
    for bit in range(6):
        bus, s, t = charging_session()
        if bit < 5:
            bus.push(0x102, f102(14, 1 << bit))
        else:
            bus.push(0x102, f102(14, 0, 0xC1 | 0x04))  # status b2: vehicle charging system fault
        s.tick(t + 10, 3000)
        out.append([s.state, s.must_stop, s.fault, s.charge_limit_w, s.discharge_limit_w])
    # after a fault, frames keep coming: the fault stays latched
    bus.push(0x102, f102(14))
    s.tick(t + 20, 3000)
    out.append([s.state, s.fault])
    s.reset()  # acted on at the next tick
    out.append([s.state, s.fault])
    s.tick(t + 30, 3000)
    out.append([s.state, s.fault])
    return out


def sticky_bits_mid_drain():
    # a stop or fault bit in one 0x102 of a drain, gone in a later one of the
    # same drain, acts in that tick
    out = []
    for first, name in ((f102(14, 0, 0xC1 | 0x10), "stop_request"), (f102(14, 0, 0xC1 | 0x02), "not_parked"),
                        (f102(14, 0, 0xC0), "disabled"), (f102(14, 0x08), "high_temp"),
                        (f102(14, 0, 0xC1 | 0x04), "system_fault")):
        bus, s, t = charging_session()
        bus.push(0x102, first)
        bus.push(0x100, F100)
        bus.push(0x102, f102(14))  # the car's next frame: all clear again
        steps = [0]
        step = s._step

        def counted(now_ms):
            steps[0] += 1
            step(now_ms)

        s._step = counted
        s.tick(t + 10, 3000)
        out.append([name, s.state, s.must_stop, s.stop_reason, s.fault, steps[0], s.ev.status, s.ev.faults])
    return out


def timeout_0x102():
    bus, s, t = charging_session()
    out = [[s.state, s.must_stop]]
    # other frames keep arriving; 0x102 does not
    for dt in (100, 500, 900, 1000):
        bus.push(0x100, F100)
        bus.push(0x200, F200)
        s.tick(t + dt, 3000)
        out.append([dt, s.state, s.must_stop, s.soc_age_ms])
    s.tick(t + 1001, 3000)
    out.append([1001, s.state, s.must_stop, s.fault])
    # the car went quiet: after 3 s more the session is over
    s.tick(t + 4100, 3000)
    out.append([4100, s.state, s.fault, s.soc_cpct, s.plugged, s.soc_source])
    return out


def incompatible_and_bus_off():
    bus = FakeBus()
    s = ChademoSession(bus, Clock(), 400, 15)  # 400 V charger, the Leaf wants 410 V
    car_cycle(bus, 0, 0, 0xC8)
    s.tick(1000, 0)
    a = [s.state, s.fault, s.must_stop, bus.sent[1][1][5]]
    bus, s, t = charging_session()
    bus.st = "bus_off"
    car_cycle(bus, 14)
    s.tick(t + 1500, 3000)
    b = [s.state, s.fault, s.must_stop, bus.recovers]
    return [a, b, bus.last(0x109)[5]]


def bus_off_backoff():
    bus = FakeBus()
    bus.st = "bus_off"
    bus.stuck = True  # e.g. an SLCAN gateway that stays unreachable
    s = ChademoSession(bus, Clock(), 500, 15)
    tries = []
    for k in range(0, 400):  # 40 s, ticked every 100 ms
        n = bus.recovers
        s.tick(1000 + 100 * k, 0)
        if bus.recovers != n:
            tries.append(k // 10)
    bus.stuck = False
    for k in range(400, 500):  # the next scheduled try succeeds
        s.tick(1000 + 100 * k, 0)
    ok_after = bus.st
    bus.st = "bus_off"
    n = bus.recovers
    for k in range(500, 515):
        s.tick(1000 + 100 * k, 0)
    return [tries, s.state, ok_after, bus.recovers - n, s.recoveries == bus.recovers]


def charger_stop_waits():
    bus, s, t = charging_session()
    s.set_measured(t, 12 * 380, 380, 12)
    s.stop("owner")
    car_cycle(bus, 14)
    s.tick(t + 100, 3000)
    a = [s.state, s.must_stop, s.stop_requested, s.stop_reason, bus.last(0x109)[5]]
    s.set_measured(t + 150, 2 * 380, 380, 2)
    car_cycle(bus, 0, 0, 0xC0)
    s.tick(t + 200, 0)
    b = s.state
    car_cycle(bus, 0, 0, 0xC8)
    s.tick(t + 300, 0)
    c = s.state
    # stopping gives up waiting after 10 s
    bus2, s2, t2 = charging_session()
    s2.stop("departure")
    s2.tick(t2 + 10, 3000)
    for k in range(1, 110):
        car_cycle(bus2, 0, 0, 0xC0)
        s2.tick(t2 + 10 + 100 * k, 0)
    return [a, b, c, s2.state, s2.last_why]


def _stopping_session():
    # charging, then stopped by the charger; the current has come down
    bus, s, t = charging_session()
    s.stop("shutdown")
    car_cycle(bus, 14)
    s.tick(t + 100, 3000)
    s.set_measured(t + 130, 0, 380, 0)
    return bus, s, t


def ended_once_told():
    # the car opens its contactors and the session stops; its frames go at
    # once, but the TX buffers take only one of them this tick (a busy bus,
    # the MCP2515's three buffers): ended(), what a clean stop waits for, is
    # true only once its 0x109 is out (the connector unlocked)
    bus, s, t = _stopping_session()
    car_cycle(bus, 0, 0, 0xC8)
    bus.room = 1
    bus.sent = []
    s.tick(t + 130, 0)
    at_transition = [s.state, s.ended(), [cid for cid, _ in bus.sent]]
    bus.refill()
    bus.sent = []
    s.tick(t + 150, 0)
    unlocked = [d[5] & 0x04 for cid, d in bus.sent if cid == 0x109]
    return [at_transition, [s.state, s.ended(), unlocked]]


def ended_with_three_buffers():
    # stopped while the TX side takes three frames a tick and a V2H cycle
    # has five: some frames are always pending, yet the session is ended
    # as soon as a stopped-state 0x109 (connector unlocked) has gone out
    bus, s, t = _stopping_session()
    bus.tx_room = 3
    out = []
    for i in range(6):
        car_cycle(bus, 0, 0, 0xC8)
        bus.refill()
        bus.sent = []
        s.tick(t + 200 + 100 * i, 0)
        out.append([s.state, s.ended(), [[cid, d[5] & 0x04] for cid, d in bus.sent if cid == 0x109]])
    return out


def _plain_car(bus, req, status):
    # a car that declares no voltage below its target (0x100 min 0 V, no
    # 0x200): the watts-to-amps basis is its 410 V target
    bus.push(0x100, F100)
    bus.push(0x101, F101)
    bus.push(0x102, f102(req, 0, status))


def charger_stop(reason, measured):
    # The car charges at 14 A; the charger stops. Cycle by cycle: the state
    # and the frames of that tick. The car (a script) asks for 0 A once it
    # sees 0x109's charging flag clear, opens its contactors one cycle later.
    measured = measured == "1"
    bus = FakeBus()
    s = ChademoSession(bus, Clock(), 500, 15)
    t = 1000
    amps = 0
    for st in (0xC8, 0xC9, 0xC1):
        _plain_car(bus, 0, st)
        s.tick(t, 6000)
        t += 100
    rows = []
    car = "charging"
    stop_at = None
    for k in range(60):
        if k == 20:
            s.stop(reason)
            stop_at = len(rows)
        if car == "charging":
            _plain_car(bus, 14, 0xC1)
        elif car == "zero":
            _plain_car(bus, 0, 0xC0)
            car = "open"
        else:
            _plain_car(bus, 0, 0xC8)
        if measured:
            # a power stage that ramps 3 A per 100 ms towards what is allowed
            want = s.charge_limit_w // 380 if s.state == "charging" else 0
            amps = min(want, amps + 3) if want > amps else max(want, amps - 3)
            s.set_measured(t, amps * 380, 380, amps)
        bus.sent = []
        s.tick(t, 6000)
        d108 = bus.last(0x108)
        d109 = bus.last(0x109)
        rows.append([s.state, d108[3] if d108 else None, d109[1] | d109[2] << 8 if d109 else None,
                     d109[3] if d109 else None, d109[5] if d109 else None, s.must_stop])
        if car == "charging" and d109 and stop_at is not None and not d109[5] & 1:
            car = "zero"
        t += 100
    return {"rows": rows, "stop_at": stop_at, "stop_reason": s.stop_reason, "requested": s.stop_requested,
            "last": s.last_transition, "why": s.last_why, "sent": _frames(bus)}


def start_after_stop():
    # departure: the session ends; the car leaves (silent) and a car comes
    # back: it waits in handshake until start(), then charges
    bus, s, t = charging_session()
    s.stop("departure")
    car_cycle(bus, 14)
    s.tick(t + 100, 3000)
    s.start()  # too late for this session: it still ends
    car_cycle(bus, 0, 0, 0xC8)
    s.tick(t + 200, 3000)
    ended = [s.state, s.stop_reason, s.ended()]
    s.stop("departure")  # the controller's wish again, while stopped
    t += 200
    s.tick(t + 3100, 3000)  # 3.1 s of silence: the car has gone
    gone = [s.state, s.plugged, s.stop_wish]
    t += 3200
    states = []
    for k in range(30):  # the car comes back and does everything right
        car_cycle(bus, 14 if k > 5 else 0, 0, 0xC8 if k == 0 else 0xC9 if k < 3 else 0xC1)
        s.tick(t + 100 * k, 3000)
        states.append(s.state)
    held = [states[-1], s.must_stop, bus.last(0x109)[5], s.ended()]
    t += 3000
    s.start()
    after = []
    for k in range(4):
        car_cycle(bus, 14)
        s.tick(t + 100 * k, 3000)
        after.append(s.state)
    return {"ended": ended, "gone": gone, "held": held, "held_states": sorted(set(states)), "after": after,
            "sessions": s.sessions, "charge_limit_w": s.charge_limit_w, "sent": _frames(bus)}


def stop_while_idle():
    bus = FakeBus()
    s = ChademoSession(bus, Clock(), 500, 15)
    s.tick(900, 3000)
    s.stop("owner")
    wish = s.stop_wish
    t = 1000
    states = []
    for st, req in ((0xC8, 0), (0xC9, 0), (0xC1, 0), (0xC1, 14)):
        car_cycle(bus, req, 0, st)
        s.tick(t, 3000)
        t += 100
        states.append(s.state)
    return [wish, states, s.must_stop]


def transitions_one_per_tick():
    # a car whose first 0x102 already has everything (enabled, contactors
    # closed, 14 A asked): still one transition per tick, each logged once
    bus = FakeBus()
    s = ChademoSession(bus, Clock(), 500, 15)
    steps = [0]
    step = s._step

    def counted(now_ms):
        steps[0] += 1
        step(now_ms)

    s._step = counted
    rows = []
    for k in range(6):
        car_cycle(bus, 14)
        n = s.transitions
        s.tick(1000 + 100 * k, 3000)
        rows.append([s.state, s.transitions - n, s.last_transition, s.last_why])
    return {"rows": rows, "steps": steps[0], "transitions": s.transitions}


def present_values():
    # 0x109 present voltage/current and 0x208 present discharge current
    out = {}

    def frames(s, bus, t, req, *meas):
        if meas:
            s.set_measured(t, *meas)
        car_cycle(bus, 14)
        bus.sent = []
        s.tick(t, req)
        d109 = bus.last(0x109)
        d208 = bus.last(0x208)
        return [d109[1] | d109[2] << 8, d109[3], 0xFF - d208[0], s.charge_limit_w, s.discharge_limit_w, s.state]

    bus, s, t = charging_session()
    out["dc"] = frames(s, bus, t + 100, 3000, 3000, 380, 8)
    out["w_only"] = frames(s, bus, t + 200, 3000, 3000)
    out["dc_v_only"] = frames(s, bus, t + 300, 3000, 3000, 375)
    out["stale"] = frames(s, bus, t + 1400, 3000)  # 1.1 s after the last measurement
    bus, s, t = charging_session(-3000)
    out["dis_dc"] = frames(s, bus, t + 100, -3000, -3000, 380, -8)
    out["dis_w_only"] = frames(s, bus, t + 200, -3000, -3000)
    # before the car closed its contactors: nothing measured, nothing claimed
    bus = FakeBus()
    s = ChademoSession(bus, Clock(), 500, 15)
    car_cycle(bus, 0, 0, 0xC9)
    s.tick(1000, 3000)
    d = bus.last(0x109)
    out["handshake"] = [d[1] | d[2] << 8, d[3], s.state]
    return out


def bad_frames():
    bus, s, t = charging_session()
    before = [s.rx_frames, s.bad_frames, s.ignored_frames]
    bus.push(0x102, f102(14, 0x01)[:7])  # wrong length: an overvoltage bit that must NOT count
    bus.push(0x102, f102(14, 0x01) + b"\x00", 8, ext=True)  # extended 0x102: another node's frame
    bus.push(0x102, b"", 8, rtr=True)  # remote request
    bus.push(0x7E0, b"\x02\x01\x00")  # unknown IDs
    bus.push(0x108, b"\x01" * 8)  # a charger ID (another charger?)
    bus.push(0x200, F200[:4])
    s.tick(t + 10, 3000)
    return [before, [s.rx_frames, s.bad_frames, s.ignored_frames], s.state, s.fault, s.ev.faults]


# ------------------------------------------------------------ TX scheduling and options


def tx_cycle(period_ms, tx_room):
    # ticked every period_ms for 2 s, up to a third of it late, with tx_room
    # free TX buffers per tick; then TX blocked for 350 ms
    p = int(period_ms)
    bus, s, t = charging_session()
    bus.sent = []
    bus.tx_room = int(tx_room)
    now = t
    gaps = []
    last109 = None
    k = 0
    while now < t + 2000:
        k += 1
        # the tick's time is taken after a Modbus read: up to 30 ms late
        now = t + p * k + (k * 7919) % (p // 3 + 1)
        bus.refill()
        if k % max(1, 100 // p) == 0:
            car_cycle(bus, 14)
        n = len(bus.sent)
        s.tick(now, 3000)
        if any(c == 0x109 for c, _ in bus.sent[n:]):
            if last109 is not None:
                gaps.append(now - last109)
            last109 = now
    ids = [c for c, d in bus.sent]
    # TX blocked for 350 ms: the stalled cycles' frames are replaced, not queued up
    bus.sent = []
    bus.tx_room = 0
    t0 = now
    while now < t0 + 350:
        now += 10
        bus.refill()
        s.tick(now, 3000)
    late = s.tx_late
    bus.tx_room = 1000
    t0 = now
    while now < t0 + 240:
        now += 10
        bus.refill()
        s.tick(now, 3000)
    return {"ids": ids, "late": late, "after": len(bus.sent), "gaps": gaps}


def dynamic_control_and_no_v2h():
    bus, s, t = charging_session()
    bus.push(0x110, b"\x01" + b"\x00" * 7)  # the car supports dynamic control
    car_cycle(bus, 14)
    s.set_measured(t, 0, 380)
    bus.sent = []
    s.tick(t + 100, 1900)
    d = dict((c, b) for c, b in bus.sent)
    a = [d[0x108][3], 0x118 in d, d.get(0x118, b"?")[0]]
    # a charger without V2H: no 0x208/0x209, 0x109 byte 4 = 0, never discharging
    bus2, s2, t2 = charging_session(-3000, max_discharge_current_a=0)
    d2 = dict((c, b) for c, b in bus2.sent)
    b = [0x208 in d2, 0x209 in d2, d2[0x109][4], s2.discharge_ok, s2.state]
    return [a, b]


def discharge_floor():
    out = []
    for soc in (0x49, 30, 25):
        bus, s, t = charging_session(-3000)
        car_cycle(bus, 14, 0, 0xC1, soc)
        s.tick(t + 100, -3000)
        out.append([s.soc_cpct, s.discharge_ok, s.state])
    return out


def no_allocation():
    bus, s, t = charging_session(-2000)
    bus.log = False
    s.set_measured(t, -1900, 380, -5)
    junk = b"\x01\x02\x03"
    F102 = f102(14)
    # warm up
    for k in range(3):
        car_cycle(bus, 14)
        bus.refill()
        s.tick(t + k, -2000)
    n = s.transitions
    gc.collect()
    micropython.heap_lock()
    try:
        for k in range(1, 3001):
            now = t + 10 * k
            if k % 10 == 0:
                bus.push(0x100, F100)
                bus.push(0x101, F101)
                bus.push(0x102, F102)
                bus.push(0x200, F200)
                bus.push(0x7E0, junk)  # unknown ID
                bus.push(0x102, junk)  # wrong length
            if k % 5 == 0:
                s.set_measured(now, -1900, 380, -5)
            elif k % 7 == 0:
                s.set_measured(now, -1900)
            bus.refill()
            s.tick(now, -2000)
        r = "ok"
    except MemoryError:
        r = "allocated"
    micropython.heap_unlock()
    return [r, s.state, bus.sent_count, s.bad_frames, s.transitions - n]


cases.main(globals())
