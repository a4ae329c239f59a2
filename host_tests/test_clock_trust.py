"""No time, no trust in time (a board boots at 2000-01-01 until SNTP answers),
and a wall clock that steps must not stretch a dispatch, stop replanning or
stop telemetry: lapses and periods run on monotonic ticks. The controller
runs on the unix port (host_tests/mp/clock_trust_cases.py)."""
import json
import socket
import struct
import threading

from conftest import run_mp, site_config
from test_cloud import DEV, EVENING_MS, KEY
from tools.cloud_client import Cloud, command

Y2000 = 946684800
EVENING_S = EVENING_MS // 1000

def test_unset_clock_runs_no_saved_dispatch_and_never_exports():
    out = run_mp("clock_trust_cases", "unset_clock", Y2000)
    got = out.json()
    assert got["dispatch"] is None
    assert [d["why"] for d in got["dropped"]] == ["clock_not_set"]
    # only what is safe without time: charge toward the departure target
    assert got["reqs"] == [[7000, "clock_not_set", 80.1]]
    assert got["now"] is None
    assert got["snap"]["clock_set"] is False and got["snap"]["ts"] is None


def test_clock_set_later_starts_the_plan_and_a_stale_saved_dispatch_is_dropped():
    out = run_mp("clock_trust_cases", "clock_set_later", Y2000, EVENING_S)
    got = out.json()
    assert got["before"] == "clock_not_set"
    assert got["after"] != "clock_not_set"
    assert len(got["set"]) == 1
    assert abs(got["ts"] - (EVENING_S + 5)) <= 1
    assert [d["why"] for d in got["dropped"]] == ["until not in the next 4 h"]


def test_wall_clock_stepping_back_does_not_stretch_a_dispatch_or_stop_replans_or_telemetry():
    out = run_mp("clock_trust_cases", "wall_clock_steps_back", EVENING_S, timeout=120)
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


def test_the_tick_reads_the_wall_clock_once_per_wall_check_not_every_tick():
    # On a 32-bit board each wall read is a big int on the heap: the control
    # tick keeps it to one read every 5 s (25 ticks at 200 ms), not one a tick.
    out = run_mp("clock_trust_cases", "wall_reads_per_tick", EVENING_S)
    got = out.json()
    # 200 s of ticks: 40 wall checks, and the odd read for an event record
    assert got["reads"] <= 1000 // 25 + 10, got


def test_a_board_with_wifi_joins_it_at_boot_without_waiting(tmp_path):
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
    out = run_mp("clock_trust_cases", "wifi_at_boot", shim)
    got = out.json()
    assert got["none"] is True  # no wifi.ssid: the network is someone else's
    assert got["got"] is True
    assert got["calls"] == [["WLAN", 0], ["active", True], ["connect", "farmhouse", "pw-123456"]]
