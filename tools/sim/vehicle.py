"""Vehicle simulator: a CHAdeMO car on an SLCAN link, for the firmware's
vehicle.link "slcan:PATH" or "slcan-tcp:HOST:PORT".

    build/venv/bin/python -m tools.sim.vehicle --pty-link FILE   # prints READY slcan:PATH
    build/venv/bin/python -m tools.sim.vehicle --tcp PORT        # prints READY slcan-tcp:127.0.0.1:PORT
      [--speed X] [--hold] [--stop-after S] [--soc PCT | --soc-file FILE]
      [--replug-after S] [--record FILE] [--duration S]

The car replays the vehicle frames (0x100/0x101/0x102/0x110/0x200/0x201) of
the real Nissan Leaf capture (../shared/reference/chademo, 100 ms cycle) and
records every frame the firmware sends, decoded with tools/chademo.dbc.

Who plays what. python-can's `slcan` interface is an SLCAN *host* driver,
like the firmware's: each sends "C", "S6", "O", transmits "t..." lines and
reads "t..." lines. Two hosts joined by a null-modem see each other's frames
as the bus's frames, which is exactly a two-node CAN bus (charger and car).
So the car here is a python-can slcanBus on one pty, the firmware opens
another, and a bridge thread copies bytes between the two pty masters
(socat's "PTY,PTY" in a few lines); with --tcp the firmware's end is a TCP
connection instead of a pty. Each side skips the other's setup lines.

A car only talks once the charger has started the session (CHAdeMO's D1
signal); here the replay starts when the firmware's first bytes arrive, so
nothing stale piles up in the tty buffers before it opens the link.

Phases of the capture: start (plug-in to steady charging, < 28.5 s), steady
(28.5 s to 49.7 s: contactors closed, 14 A asked, 15 A discharge allowed),
stop (the car ends the session). --hold repeats the steady phase until
--stop-after seconds of the session (or SIGUSR1), then plays the stop;
afterwards, or without --hold at the end of the capture, the car keeps
repeating its last cycle (plugged in, stopped) until SIGTERM/SIGINT or
--duration.

When the charger ends the session (0x109 shows stop control, or its
"charging" flag cleared, after the charging loop had begun, and before the
car started its own stop) the car does what CHAdeMO asks of it: it ramps
its current request to 0, clears "enabled" (102.5.0), waits for the
charger's "charging" flag to clear (at most 2 s), opens its contactors
(102.5.3) and goes quiet. Standing in for the car leaving and coming back,
it stays silent --replug-after wall seconds (default 5; the firmware takes a
car silent for 3 s as gone) and plugs in again: a new session from the
capture's start, with its SoC (--soc / --soc-file).
"""
import argparse
import csv
import json
import os
import select
import signal
import socket
import sys
import termios
import threading
import time
import tty
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CAPTURE = ROOT / "fixtures" / "chademo" / "chademo-rs_nissan-leaf-chademo-start-stop.csv"
DBC = ROOT / "tools" / "chademo.dbc"

VEHICLE_IDS = (0x100, 0x101, 0x102, 0x110, 0x200, 0x201)
CHARGER_IDS = (0x108, 0x109, 0x118, 0x208, 0x209)
# capture time stamps (s) of its phases
STEADY_FROM_S = 28.5
STEADY_TO_S = 49.7
SOC_VALID_FROM_S = 5.13  # the Leaf's SoC byte is junk (3 %, 1 %) before this
# 0x109 byte 5 (charger status) and 0x102 byte 5 (car status) bits
CH_CHARGING = 0x01
CH_STOP_CONTROL = 0x20
EV_ENABLED = 0x01
EV_CONTACTOR_OPEN = 0x08
REQ_RAMP_A = 4  # the car's request falls by this much per 100 ms cycle when the charger stops
# what _play() ended with
DONE, EXIT, CHARGER_STOP = "done", "exit", "charger_stop"


def load_capture(path=CAPTURE):
    """-> [(t_s, can_id, bytes)] of every frame in the capture, in order;
    t_s is the capture's own time stamp (the CSV's microseconds, in s)."""
    frames = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            n = int(row["LEN"])
            data = bytes(int(row[f"D{i + 1}"], 16) for i in range(n))
            frames.append((int(row["Time Stamp"]) / 1e6, int(row["ID"], 16), data))
    return frames


def vehicle_frames(path=CAPTURE):
    return [f for f in load_capture(path) if f[1] in VEHICLE_IDS]


# ------------------------------------------------------------------ links


def _raw_pty():
    master, slave = os.openpty()
    # Raw on the slave side at once: the default line discipline would echo
    # the bridge's bytes back and turn CR into LF before anyone opens it.
    tty.setraw(slave, termios.TCSANOW)
    return master, slave


class _Bridge:
    """Copies bytes between the firmware's end and the car's pty master.
    Subclasses provide the firmware's end (a pty master, or a TCP socket)."""

    def __init__(self):
        self.car_master, self._car_slave = _raw_pty()
        self.car_path = os.ttyname(self._car_slave)
        self.first_byte = threading.Event()  # the firmware spoke
        self.fw_bytes = 0
        self.car_bytes = 0
        self.dropped = 0
        os.set_blocking(self.car_master, False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def close(self):
        self._stop.set()
        self._thread.join(2)
        for fd in (self.car_master, self._car_slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _write_all(self, fd, data):
        # Non-blocking with a short grace: a reader that stopped reading
        # (firmware gone) must not wedge the bridge, so the rest is dropped.
        deadline = time.monotonic() + 0.2
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    self.dropped += len(data)
                    return
                select.select([], [fd], [], 0.02)
                continue
            except OSError:
                self.dropped += len(data)
                return
            data = data[n:]


class PtyBridge(_Bridge):
    """The firmware opens `fw_path` (a pty slave) as vehicle.link slcan:PATH."""

    def __init__(self):
        super().__init__()
        self.fw_master, self._fw_slave = _raw_pty()
        os.set_blocking(self.fw_master, False)
        self.fw_path = os.ttyname(self._fw_slave)
        self.link = "slcan:" + self.fw_path

    def _run(self):
        a, b = self.fw_master, self.car_master
        while not self._stop.is_set():
            r, _, _ = select.select([a, b], [], [], 0.05)
            for fd in r:
                try:
                    data = os.read(fd, 4096)
                except (BlockingIOError, OSError):
                    continue
                if fd == a:
                    self.fw_bytes += len(data)
                    self.first_byte.set()
                    self._write_all(b, data)
                else:
                    self.car_bytes += len(data)
                    self._write_all(a, data)

    def close(self):
        super().close()
        for fd in (self.fw_master, self._fw_slave):
            try:
                os.close(fd)
            except OSError:
                pass


class TcpBridge(_Bridge):
    """The firmware connects to 127.0.0.1:port as vehicle.link
    slcan-tcp:HOST:PORT. One connection at a time; a new one replaces it.
    While none is connected the car's bytes are dropped (a dead gateway)."""

    def __init__(self, port=0, host="127.0.0.1"):
        super().__init__()
        self._lsock = socket.socket()
        self._lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._lsock.bind((host, port))
        self._lsock.listen(2)
        self.port = self._lsock.getsockname()[1]
        self.link = f"slcan-tcp:{host}:{self.port}"
        self.conn = None
        self.connections = 0

    def drop_client(self):
        """Close the firmware's connection (tests: link loss)."""
        c, self.conn = self.conn, None
        if c is not None:
            c.close()

    def _run(self):
        b = self.car_master
        while not self._stop.is_set():
            socks = [self._lsock, b] + ([self.conn] if self.conn else [])
            r, _, _ = select.select(socks, [], [], 0.05)
            for s in r:
                if s is self._lsock:
                    c, _ = self._lsock.accept()
                    self.drop_client()
                    self.conn = c
                    self.connections += 1
                elif s is b:
                    try:
                        data = os.read(b, 4096)
                    except (BlockingIOError, OSError):
                        continue
                    self.car_bytes += len(data)
                    if self.conn is not None:
                        try:
                            self.conn.sendall(data)
                        except OSError:
                            self.drop_client()
                else:
                    try:
                        data = s.recv(4096)
                    except OSError:
                        data = b""
                    if not data:
                        self.drop_client()
                        continue
                    self.fw_bytes += len(data)
                    self.first_byte.set()
                    self._write_all(b, data)

    def close(self):
        super().close()
        self.drop_client()
        self._lsock.close()


# ------------------------------------------------------------------ the car


class VehicleSim:
    """The car: python-can slcan on the bridge's car pty. Replays the
    capture's vehicle frames and records the firmware's frames."""

    def __init__(self, bridge, speed=1.0, hold=False, stop_after_s=None, soc_pct=None,
                 soc_file=None, frames=None, wait_for_charger=True, replug_after_s=5.0):
        import can

        self.bridge = bridge
        self.speed = speed
        self.hold = hold
        self.stop_after_s = stop_after_s
        self.soc_pct = soc_pct
        self.soc_file = soc_file
        self.frames = frames if frames is not None else vehicle_frames()
        self.wait_for_charger = wait_for_charger
        self.replug_after_s = replug_after_s
        self.bus = can.interface.Bus(interface="slcan", channel=bridge.car_path, bitrate=500000,
                                     sleep_after_open=0)
        self.received = []  # (t_s since replay start, id, bytes, ext)
        self.sent = 0
        self.started_at = None
        self.phase = "waiting"
        self.sessions = 0  # plug-ins
        self.charger_stops = 0  # sessions the charger ended
        self._charger_stop = threading.Event()
        self._loop_seen = False  # this session's 0x109 showed the charging loop
        self._own_stop = False  # the car has begun its own stop sequence
        self._ch_status = None  # the charger's last 0x109 status byte
        self._last = {}  # vehicle ID -> the last frame sent
        self._stop_now = threading.Event()
        self._end_steady = threading.Event()
        self._threads = []
        self._soc_file_value = None
        self._soc_file_read = 0.0

    # -- control

    def end_steady(self):
        """Let a --hold run go on to the stop sequence (SIGUSR1)."""
        self._end_steady.set()

    def start(self):
        for fn in (self._replay, self._receive):
            t = threading.Thread(target=fn, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop_now.set()
        for t in self._threads:
            t.join(3)
        try:
            self.bus.shutdown()
        except Exception:  # noqa: BLE001 (the pty may be gone already)
            pass

    # -- helpers

    def _soc_override(self):
        if self.soc_file:
            now = time.monotonic()
            if now - self._soc_file_read > 0.05:
                self._soc_file_read = now
                try:
                    text = Path(self.soc_file).read_text().strip()
                    v = json.loads(text)
                    self._soc_file_value = float(v["soc_pct"] if isinstance(v, dict) else v)
                except (OSError, ValueError, KeyError, TypeError):
                    pass
            return self._soc_file_value
        return self.soc_pct

    def _send(self, t_cap, cid, data):
        """t_cap: the frame's capture time, or None for a frame the car
        makes up (the SoC override applies)."""
        import can

        if t_cap is not None and t_cap >= STEADY_TO_S:
            self._own_stop = True
        if cid == 0x102 and (t_cap is None or t_cap >= SOC_VALID_FROM_S):
            soc = self._soc_override()
            if soc is not None:
                data = bytearray(data)
                data[6] = max(0, min(100, int(round(soc))))
                data = bytes(data)
        self.bus.send(can.Message(arbitration_id=cid, data=data, is_extended_id=False))
        self._last[cid] = data
        self.sent += 1

    def _sleep_until(self, t_wall):
        while not self._stop_now.is_set():
            left = t_wall - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.05))
        return False

    def _play(self, frames, t_offset, base):
        """frames at capture times t; plays frame t at base + (t - t_offset)/speed.
        -> DONE, EXIT (stop now) or CHARGER_STOP (the charger ended the session)."""
        for t, cid, data in frames:
            if not self._sleep_until(base + (t - t_offset) / self.speed):
                return EXIT
            if self._charger_stop.is_set():
                return CHARGER_STOP
            if self.hold and self.phase == "steady" and self._end_steady.is_set():
                return DONE
            self._send(t, cid, data)
        return DONE

    def _replay(self):
        if self.wait_for_charger:
            while not self.bridge.first_byte.wait(0.1):
                if self._stop_now.is_set():
                    return
        self.started_at = time.monotonic()
        while True:
            r = self._session()
            if r == EXIT:
                return
            if r == DONE:
                break  # the car ended the session itself: it stays plugged in
            self.charger_stops += 1
            if not self._end_for_charger():
                return
            # the car leaves and comes back: silent, then a new plug-in
            self.phase = "away"
            if not self._sleep_until(time.monotonic() + self.replug_after_s):
                return
        self._parked()

    def _session(self):
        """One plug-in: the capture from its start. -> DONE (the car's own
        stop played), EXIT or CHARGER_STOP."""
        self.sessions += 1
        self._loop_seen = False
        self._own_stop = False
        self._charger_stop.clear()
        frames = self.frames
        t_first = frames[0][0]
        base = time.monotonic()
        if not self.hold:
            self.phase = "replay"
            return self._play(frames, t_first, base)
        start = [f for f in frames if f[0] < STEADY_FROM_S]
        steady = [f for f in frames if STEADY_FROM_S <= f[0] < STEADY_TO_S]
        stop = [f for f in frames if f[0] >= STEADY_TO_S]
        self.phase = "start"
        r = self._play(start, t_first, base)
        if r != DONE:
            return r
        self.phase = "steady"
        span = STEADY_TO_S - STEADY_FROM_S
        t_base = base + (STEADY_FROM_S - t_first) / self.speed
        while not self._end_steady.is_set():
            if self.stop_after_s is not None and time.monotonic() - base >= self.stop_after_s:
                break
            r = self._play(steady, STEADY_FROM_S, t_base)
            if r != DONE:
                return r
            t_base += span / self.speed
        self.phase = "stop"
        return self._play(stop, STEADY_TO_S, time.monotonic())

    def _cycle(self, req_a=None, status_set=0, status_clear=0, discharge_a=None):
        """One 100 ms cycle of the car's last frames, 0x102 (and 0x200)
        changed as given."""
        for cid in VEHICLE_IDS:
            data = self._last.get(cid)
            if data is None:
                continue
            data = bytearray(data)
            if cid == 0x102:
                if req_a is not None:
                    data[3] = req_a
                data[5] = (data[5] | status_set) & ~status_clear
            elif cid == 0x200 and discharge_a is not None:
                data[0] = 0xFF - discharge_a  # inverted
            self._send(None, cid, bytes(data))
        return self._sleep_until(time.monotonic() + 0.1 / self.speed)

    def _end_for_charger(self):
        """The charger ended the session: request to 0, enabled cleared,
        contactors open once the charger's current is low; then quiet.
        -> False when told to stop meanwhile."""
        self.phase = "ending"
        last = self._last.get(0x102)
        req = last[3] if last else 0
        while req > 0:
            req = max(0, req - REQ_RAMP_A)
            if not self._cycle(req_a=req, discharge_a=0):
                return False
        give_up = time.monotonic() + 2.0
        while (self._ch_status is not None and self._ch_status & CH_CHARGING
               and time.monotonic() < give_up):
            if not self._cycle(req_a=0, status_clear=EV_ENABLED, discharge_a=0):
                return False
        for _ in range(10):  # contactors open: the charger sees it, then the car goes quiet
            if not self._cycle(req_a=0, status_set=EV_CONTACTOR_OPEN, status_clear=EV_ENABLED, discharge_a=0):
                return False
        return True

    def _parked(self):
        # plugged in, stopped: repeat the last cycle of each ID
        self.phase = "parked"
        last = {}
        for t, cid, data in self.frames:
            last[cid] = (t, cid, data)
        cycle = sorted(last.values(), key=lambda f: f[0])
        t0 = cycle[0][0]  # capture times kept: the SoC override still applies
        base = time.monotonic()
        while not self._stop_now.is_set():
            if self._play(cycle, t0, base) == EXIT:
                return
            base += 0.1 / self.speed

    def _charger_status(self, status):
        # 0x109 byte 5: the charging loop (charging flag, stop control
        # clear), then stop control or the flag cleared = the charger ends it
        self._ch_status = status
        if self.phase not in ("start", "steady", "replay") or self._own_stop:
            return
        if status & CH_CHARGING and not status & CH_STOP_CONTROL:
            self._loop_seen = True
        elif self._loop_seen:
            self._charger_stop.set()

    def _receive(self):
        while not self._stop_now.is_set():
            try:
                msg = self.bus.recv(0.1)
            except Exception:  # noqa: BLE001 (link torn down at exit)
                if self._stop_now.is_set():
                    return
                time.sleep(0.05)
                continue
            if msg is None:
                continue
            t = time.monotonic() - (self.started_at or time.monotonic())
            self.received.append((t, msg.arbitration_id, bytes(msg.data), msg.is_extended_id))
            if msg.arbitration_id == 0x109 and not msg.is_extended_id and len(msg.data) == 8:
                self._charger_status(msg.data[5])

    # -- results

    def report(self):
        """Counts per ID and the DBC decode of every firmware frame."""
        import cantools

        db = cantools.database.load_file(str(DBC))
        counts = {}
        undecodable = 0
        last = {}
        for _t, cid, data, ext in self.received:
            counts[hex(cid)] = counts.get(hex(cid), 0) + 1
            if ext:
                undecodable += 1
                continue
            try:
                last[hex(cid)] = db.decode_message(cid, data, decode_choices=False)
            except (KeyError, ValueError, cantools.database.DecodeError):
                undecodable += 1
        return {"sent": self.sent, "received": len(self.received), "counts": counts,
                "undecodable": undecodable, "last": last, "phase": self.phase, "sessions": self.sessions,
                "charger_stops": self.charger_stops}


# ------------------------------------------------------------------ main


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.sim.vehicle", description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty-link", metavar="FILE",
                       help="create a pty for the firmware, write its path to FILE")
    where.add_argument("--tcp", type=int, metavar="PORT", help="listen for slcan-tcp on PORT (0 = any)")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed factor (1 = real time)")
    p.add_argument("--hold", action="store_true", help="repeat the steady charging phase")
    p.add_argument("--stop-after", type=float, default=None, metavar="S",
                   help="with --hold: play the stop sequence after S wall seconds")
    p.add_argument("--soc", type=float, default=None, help="override the car's SoC byte, %%")
    p.add_argument("--soc-file", default=None, help="file holding the SoC %% (number or {\"soc_pct\": x})")
    p.add_argument("--replug-after", type=float, default=5.0, metavar="S",
                   help="after a charger-side stop: silent S wall seconds, then plug in again")
    p.add_argument("--record", default=None, metavar="FILE", help="write the firmware's frames as JSON")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="exit after S wall seconds")
    p.add_argument("--no-wait", action="store_true", help="start the replay without waiting for the charger")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    bridge = PtyBridge() if args.pty_link else TcpBridge(args.tcp)
    bridge.start()
    sim = VehicleSim(bridge, speed=args.speed, hold=args.hold, stop_after_s=args.stop_after,
                     soc_pct=args.soc, soc_file=args.soc_file, wait_for_charger=not args.no_wait,
                     replug_after_s=args.replug_after)
    if args.pty_link:
        tmp = args.pty_link + ".tmp"
        Path(tmp).write_text(bridge.fw_path + "\n")
        os.replace(tmp, args.pty_link)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGUSR1, lambda *_: sim.end_steady())
    sim.start()
    print("READY " + bridge.link, flush=True)
    done.wait(args.duration)
    sim.stop()
    bridge.close()
    rep = sim.report()
    if args.record:
        rec = {"frames": [{"t": round(t, 4), "id": cid, "data": data.hex(), "ext": ext}
                          for t, cid, data, ext in sim.received],
               "report": rep}
        tmp = args.record + ".tmp"
        Path(tmp).write_text(json.dumps(rec))
        os.replace(tmp, args.record)
    print(json.dumps({k: v for k, v in rep.items() if k != "last"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
