"""No time, no trust in time (a board boots at 2000-01-01 until SNTP answers),
and a wall clock that steps must not stretch a dispatch, stop replanning or
stop telemetry: lapses and periods run on monotonic ticks."""
import json
import os
import socket
import struct
import threading

from conftest import site_config
from test_cloud import DEV, EVENING_MS, KEY
from tools.cloud_client import Cloud, command

Y2000 = 946684800
EVENING_S = EVENING_MS // 1000

# A controller with a clock the test moves: ticks and wall separately.
_FAKE = """
import json
from v2g import config, log
from v2g.clock import Clock
from v2g.control import Controller
from v2g.modbus import ModbusError
log.quiet = True

class FakeClock(Clock):
    warp = 1
    def __init__(self, wall_s):
        self.ms = 0
        self.wall0 = wall_s
    def ticks_ms(self):
        return self.ms
    def ticks_diff(self, a, b):
        return a - b
    def time(self):
        return self.wall0 + self.ms // 1000

class DeadInverter:
    # link down: the controller still ticks, plans and samples telemetry
    ready = False
    inverter_droop = False
    last_wset = None
    models = {}
    def discover(self):
        raise ModbusError("no answer")

cfg = config.load('examples/site.json')
def started(wall_s):
    # a controller at 70 % SoC, one second after start
    clk = FakeClock(wall_s)
    c = Controller(cfg, clk, DeadInverter())
    c.guard.soc_cpct = 7000
    clk.ms += 1000
    c._follow_time(clk.ms)
    return clk, c
def evs(c, kind):
    return [e for e in c.shared.events.take() if e["ev"] == kind]
"""


def test_unset_clock_runs_no_saved_dispatch_and_never_exports(mpy):
    out = mpy(_FAKE + f"""
clk = FakeClock({Y2000} + 19 * 3600)
c = Controller(cfg, clk, DeadInverter())
# saved by a command before the reboot: it must not run on an unset clock
c.apply_settings({{"dispatch": [-5000, {Y2000} + 20 * 3600]}})
dropped = evs(c, "dispatch_dropped")
c.guard.soc_cpct = 7000  # 70 %: at the evening peak a plan would export
reqs = set()
for i in range(3600):  # an hour, a request per second
    clk.ms += 1000
    c._follow_time(clk.ms)
    w, why, ceiling = c._request(c.now_fw_s)
    reqs.add((w, why, ceiling))
print(json.dumps({{"dropped": dropped, "dispatch": c.dispatch, "reqs": sorted(reqs), "now": c.now_fw_s,
                  "snap": (c._publish(), c.shared.state())[1]}}))
""")
    got = out.json()
    assert got["dispatch"] is None
    assert [d["why"] for d in got["dropped"]] == ["clock_not_set"]
    # only what is safe without time: charge toward the departure target
    assert got["reqs"] == [[7000, "clock_not_set", 80.1]]
    assert got["now"] is None
    assert got["snap"]["clock_set"] is False and got["snap"]["ts"] is None


def test_clock_set_later_starts_the_plan_and_a_stale_saved_dispatch_is_dropped(mpy):
    out = mpy(_FAKE + f"""
clk, c = started({Y2000})
before = c._request(c.now_fw_s)[1]
clk.wall0 = {EVENING_S} - 1  # SNTP answered
clk.ms += 5000
c._follow_time(clk.ms)
set_evs = evs(c, "clock_set")
after = c._request(c.now_fw_s)[1]
# a saved dispatch 5 h ahead (a clock that was wrong when it was saved)
c.apply_settings({{"dispatch": [-5000, {EVENING_S} + 5 * 3600]}})
print(json.dumps({{"before": before, "after": after, "set": set_evs, "dropped": evs(c, "dispatch_dropped"),
                  "ts": (c._publish(), c.shared.state())[1]["ts"]}}))
""")
    got = out.json()
    assert got["before"] == "clock_not_set"
    assert got["after"] != "clock_not_set"
    assert len(got["set"]) == 1
    assert abs(got["ts"] - (EVENING_S + 5)) <= 1
    assert [d["why"] for d in got["dropped"]] == ["until not in the next 4 h"]


def test_wall_clock_stepping_back_does_not_stretch_a_dispatch_or_stop_replans_or_telemetry(mpy):
    out = mpy(_FAKE + f"""
clk, c = started({EVENING_S})
c._do(("dispatch", -3000, {EVENING_S} + 1 + 1800))  # 30 min
samples = 0
jumps = []
replans = []
whys = []
for s in range(1, 2401):  # 40 min in 1 s steps
    clk.ms += 1000
    if s in (600, 2000):
        clk.wall0 -= 3600  # the wall clock steps back an hour (in the dispatch, then in the plan)
    c.tick()
    # tick() judged the dead link: give the plan a SoC again, ask directly
    c.guard.soc_cpct = 7000
    before = c.plan.computed_at
    w, why, _ = c._request(c.now_fw_s)
    if c.plan.computed_at != before:
        replans.append(s)
    whys.append(why)
    j = [e for e in c.shared.events.take() if e["ev"] in ("clock_jump", "dispatch_lapsed")]
    jumps += j
    while c.shared.telemetry.pop():
        samples += 1
print(json.dumps({{"jumps": jumps, "whys": whys, "samples": samples, "replans": replans}}))
""", timeout=120)
    got = out.json()
    kinds = [e["ev"] for e in got["jumps"]]
    assert kinds == ["clock_jump", "dispatch_lapsed", "clock_jump"], kinds
    assert got["jumps"][0]["by_s"] == -3600 and got["jumps"][2]["by_s"] == -3600
    whys = got["whys"]
    # the dispatch ran its 30 minutes of monotonic time, not 30 + 60
    last_dispatch = max(i for i, w in enumerate(whys) if w == "dispatch") + 1
    assert 1795 <= last_dispatch <= 1801, last_dispatch
    assert "dispatch" not in whys[1802:]
    # the plan replanned at once on the step back (within the 5 s wall
    # check), then every replan_s (60 s) as before
    replans = got["replans"]
    after = [t for t in replans if t >= 2000]
    assert after and after[0] <= 2006, replans
    assert len(after) >= 6 and all(b - a <= 61 for a, b in zip(after, after[1:])), after
    # telemetry every 10 s of monotonic time throughout (2400 s)
    assert 235 <= got["samples"] <= 241, got["samples"]


class SntpServer:
    """SNTP on loopback: answers with the time `now()` gives once `answer`
    is set (before that it stays silent, as an unreachable server)."""

    def __init__(self, now):
        self.now = now
        self.answer = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                data, addr = self.sock.recvfrom(512)
            except OSError:
                continue
            self.requests += 1
            if not self.answer.is_set() or len(data) < 48:
                continue
            reply = bytearray(48)
            reply[0] = 0x24  # LI 0, version 4, mode 4 (server)
            reply[1] = 2  # stratum
            reply[40:44] = struct.pack("!I", int(self.now()) + 2208988800)
            self.sock.sendto(bytes(reply), addr)

    def close(self):
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


def test_board_booting_at_2000_refuses_time_commands_until_sntp_then_plans(tmp_path, broker, live_inverter, firmware):
    b = broker()
    # the simulated site and the firmware share a clock that reads 2000-01-01
    # 19:00 local, like a board's RTC after a power cut
    inv = live_inverter(warp=1.0, sim_epoch=Y2000 + 11 * 3600, soc_pct=70, ramp_w_per_s=1e6)
    real_offset = EVENING_S - (Y2000 + 11 * 3600)  # what the true time is ahead of the board's
    sntp = SntpServer(lambda: inv.clock.now() + real_offset)
    cfg_path, cfg = site_config(tmp_path, inv.port, b.port, ntp={"server": f"127.0.0.1:{sntp.port}"})
    store = tmp_path / "store"
    store.mkdir()
    (store / "settings.json").write_text(json.dumps({"dispatch": [-5000, Y2000 + 12 * 3600]}))
    cloud = Cloud("127.0.0.1", b.port, DEV)
    try:
        fw = firmware(cfg_path, {"V2G_CLOCK": inv.clock.to_env()})
        assert fw.wait_event("dispatch_dropped", lambda e: e["why"] == "clock_not_set"), fw.output()
        st = cloud.wait(lambda c: [x for x in c.json("state") if x["reason"] == "clock_not_set"], timeout=20)
        assert st, cloud.json("state")
        assert st[-1]["clock_set"] is False and st[-1]["ts"] is None and st[-1]["mode"] == "charge"
        # the cloud's dispatch needs time: refused, with the id kept
        now = int(inv.clock.now()) + real_offset
        cloud.send(command(KEY, "dispatch", {"ev_w": -4000, "until": now + 1800}, 1, now + 600, "d1"))
        res = cloud.result("d1")
        assert res["ok"] is False and res["error"] == "clock_not_set", res
        assert sntp.requests >= 1  # it asked; the server is silent so far
        # never an export while the time is unknown (WSet is positive for export)
        assert all(w <= 0 for _, w in list(inv.inv.writes)), list(inv.inv.writes)[-5:]
        sntp.answer.set()
        assert fw.wait_event("sntp", timeout=30), fw.output()
        assert fw.wait_event("clock_set", timeout=15), fw.output()
        st = cloud.wait(lambda c: [x for x in c.json("state") if x.get("clock_set")], timeout=20)
        assert st and abs(st[-1]["ts"] - (inv.clock.now() + real_offset)) < 15, st
        # with the time known the evening peak plan runs again (no longer clock_not_set)
        assert cloud.wait(lambda c: [x for x in c.json("state") if x.get("clock_set") and x["reason"] != "clock_not_set"],
                          timeout=20)
        # and a dispatch is accepted
        now = int(inv.clock.now()) + real_offset
        cloud.send(command(KEY, "dispatch", {"ev_w": -4000, "until": now + 1800}, 2, now + 600, "d2"))
        assert cloud.result("d2")["ok"] is True
    finally:
        cloud.close()
        sntp.close()


def test_the_tick_reads_the_wall_clock_once_per_wall_check_not_every_tick(mpy):
    # On a 32-bit board each wall read is a big int on the heap: the control
    # tick keeps it to one read every 5 s (25 ticks at 200 ms), not one a tick.
    out = mpy(_FAKE + f"""
class CountingClock(FakeClock):
    reads = 0
    def time(self):
        self.reads += 1
        return FakeClock.time(self)
clk = CountingClock({EVENING_S})
c = Controller(cfg, clk, DeadInverter())
r0 = clk.reads
for i in range(1000):
    clk.ms += c.period_ms
    c.tick()
print(json.dumps({{"reads": clk.reads - r0, "ticks": 1000}}))
""")
    got = out.json()
    # 200 s of ticks: 40 wall checks, and the odd read for an event record
    assert got["reads"] <= 1000 // 25 + 10, got


def test_a_board_with_wifi_joins_it_at_boot_without_waiting(mpy, tmp_path):
    # No radio here: a stand-in `network` module records what the firmware
    # asks of the WLAN interface (a board's is network.WLAN(STA_IF)).
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "network.py").write_text(
        "STA_IF = 0\ncalls = []\n"
        "class WLAN:\n"
        "    def __init__(self, i): calls.append(('WLAN', i))\n"
        "    def active(self, on): calls.append(('active', on))\n"
        "    def isconnected(self): return False\n"
        "    def connect(self, ssid, pw): calls.append(('connect', ssid, pw))\n")
    out = mpy(f"""
import json, sys
sys.path.insert(0, {str(shim)!r})
from v2g import config
from v2g.board import wifi_up
import network
cfg = config.load('examples/site.json')
none = wifi_up(cfg)
cfg["wifi"] = {{"ssid": "farmhouse", "password": "pw-123456"}}
w = wifi_up(cfg)
print(json.dumps({{"none": none is None, "calls": network.calls, "got": w is not None}}))
""")
    got = out.json()
    assert got["none"] is True  # no wifi.ssid: the network is someone else's
    assert got["got"] is True
    assert got["calls"] == [["WLAN", 0], ["active", True], ["connect", "farmhouse", "pw-123456"]]
