"""Site config validation (CONTRACT section 2), run on the unix port."""
import copy
import json
import os
import select
import signal
import socket
import subprocess

import pytest

from conftest import ROOT, run_mp

BASE = json.loads((ROOT / "examples" / "site.json").read_text())


def validate_many(tmp_path, cases):
    """Validate each config on the unix port; -> list of "ok" or "path: rule"."""
    path = tmp_path / "test_config_cases.json"
    path.write_text(json.dumps(cases))
    return run_mp("config_cases", "validate_many", path).lines()


def mutate(fn):
    c = copy.deepcopy(BASE)
    fn(c)
    return c


def set_path(path, value):
    def fn(c):
        keys = path.split(".")
        d = c
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value
    return fn


def delete(path):
    def fn(c):
        keys = path.split(".")
        d = c
        for k in keys[:-1]:
            d = d[k]
        del d[keys[-1]]
    return fn


BAD = [
    # (mutation, expected path, expected words in the rule)
    (delete("device_id"), "device_id", "required"),
    (set_path("device_id", "Home_1"), "device_id", "[a-z0-9-]"),
    (set_path("device_id", "a" * 33), "device_id", "at most 32"),
    (set_path("ntp", {"server": "time.example:ntp"}), "ntp.server", "HOST:PORT"),
    (set_path("ntp", {"server": "127.0.0.1:70000"}), "ntp.server", "1..65535"),
    (delete("inverter"), "inverter", "required"),
    (set_path("inverter.driver", "modbus"), "inverter.driver", '"sunspec"'),
    (set_path("inverter.link", "tcp:host"), "inverter.link", "HOST:PORT"),
    (set_path("inverter.link", "tcp:host:99999"), "inverter.link", "1..65535"),
    (set_path("inverter.link", "serial"), "inverter.link", '"uart"'),
    (set_path("inverter.unit", 0), "inverter.unit", ">= 1"),
    (set_path("inverter.unit", 248), "inverter.unit", "<= 247"),
    (set_path("inverter.unit", True), "inverter.unit", "integer"),
    (set_path("inverter.unit", "1"), "inverter.unit", "integer"),
    (set_path("battery.capacity_wh", 0), "battery.capacity_wh", ">= 1"),
    (set_path("battery.capacity_wh", "60kWh"), "battery.capacity_wh", "number"),
    (set_path("battery.soc_min_pct", -1), "battery.soc_min_pct", ">= 0"),
    (set_path("battery.soc_max_pct", 101), "battery.soc_max_pct", "<= 100"),
    (set_path("battery.reserve_pct", 5), "battery.reserve_pct", ">= battery.soc_min_pct"),
    (set_path("battery.reserve_pct", 95), "battery.soc_max_pct", ">= battery.reserve_pct"),
    (set_path("departure.soc_pct", 20), "departure.soc_pct", ">= battery.reserve_pct"),
    (set_path("departure.soc_pct", 100.5), "departure.soc_pct", "<= 100"),
    (set_path("departure.time", "7:30"), "departure.time", "HH:MM"),
    (set_path("departure.time", "24:00"), "departure.time", "HH 00-23"),
    (set_path("limits.charge_w", 0), "limits.charge_w", ">= 1"),
    (set_path("limits.charge_w", 7000.5), "limits.charge_w", "integer"),
    (set_path("limits.discharge_w", -1), "limits.discharge_w", ">= 0"),
    (set_path("limits.ramp_w_per_s", 0), "limits.ramp_w_per_s", ">= 1"),
    (set_path("limits.charge_kw", 7), "limits.charge_kw", "unknown key"),
    (set_path("limits.min_w", 8000), "limits.min_w", "<= limits.charge_w"),
    (set_path("battery.reserve", 30), "battery.reserve", "unknown key"),
    (set_path("extra", 1), "extra", "unknown key"),
    (set_path("tariff.periods", []), "tariff.periods", "non-empty"),
    (set_path("tariff.currency", ""), "tariff.currency", "non-empty"),
    (lambda c: c["tariff"]["periods"].pop(1), "tariff.periods", "gap from 07:00 to 10:00"),
    (lambda c: c["tariff"]["periods"][1].update(end="11:00"), "tariff.periods[2]", "overlaps periods[1] at 10:00"),
    (lambda c: c["tariff"]["periods"][0].update(start="06:00", end="06:00"), "tariff.periods[0]", "start and end must differ"),
    (lambda c: c["tariff"]["periods"][0].update(price=1), "tariff.periods[0].price", "unknown key"),
    (lambda c: c["tariff"]["periods"][0].pop("export"), "tariff.periods[0].export", "required"),
    (lambda c: c["tariff"]["periods"][2].update(start="10:60"), "tariff.periods[2].start", "MM 00-59"),
    (set_path("tariff.seasons", []), "tariff.seasons", "non-empty"),
    (set_path("tariff.seasons", {"summer": []}), "tariff.seasons", "non-empty list"),
    (lambda c: c["tariff"]["seasons"][0]["months"].append(13), "tariff.seasons[0].months", "integers 1-12"),
    (lambda c: c["tariff"]["seasons"][0].update(months=[]), "tariff.seasons[0].months", "non-empty"),
    (lambda c: c["tariff"]["seasons"][0].update(months=[7, "8"]), "tariff.seasons[0].months", "integers 1-12"),
    (lambda c: c["tariff"]["seasons"][0].update(months=[7, 7]), "tariff.seasons[0].months", "month 7 listed twice"),
    (lambda c: c["tariff"]["seasons"][1]["months"].append(8), "tariff.seasons[1].months",
     "month 8 is in another season too"),
    (lambda c: c["tariff"]["seasons"][0]["periods"].pop(3), "tariff.seasons[0].periods", "gap from 11:00 to 12:00"),
    (lambda c: c["tariff"]["seasons"][1].pop("periods"), "tariff.seasons[1].periods", "required"),
    (lambda c: c["tariff"]["seasons"][1].update(hours=1), "tariff.seasons[1].hours", "unknown key"),
    (set_path("mqtt.port", 0), "mqtt.port", ">= 1"),
    (set_path("mqtt.tls", True), "mqtt.tls", "false or"),
    (set_path("mqtt.tls", {"ca": "/nonexistent/ca.der"}), "mqtt.tls.ca", "file not found"),
    (set_path("mqtt.tls", {"cert": "x"}), "mqtt.tls.ca", "required"),
    (delete("mqtt.tls"), "mqtt.tls", "required"),
    (set_path("command_key", "00" * 31), "command_key", "64 hex"),
    (set_path("command_key", "zz" * 32), "command_key", "64 hex"),
    (set_path("command_key", "0" * 64), "command_key", "must not be all zeros"),
    (set_path("command_key", "ff" * 32), "command_key", "must not be one byte repeated"),
    (set_path("command_key", "aB" * 32), "command_key", "must not be one byte repeated"),
    (set_path("mqtt.tls", {"ca": "firmware"}), "mqtt.tls.ca", "is a directory, not a file: firmware"),
    (set_path("mqtt.tls", {"ca": "examples/site.json", "cert": "firmware", "key": "examples/site.json"}),
     "mqtt.tls.cert", "is a directory"),
    (set_path("mqtt.client_id", "c" * 24), "mqtt.client_id", "at most 23"),
    (set_path("utc_offset_min", 900), "utc_offset_min", "<= 840"),
    (set_path("control", {"period_ms": 10}), "control.period_ms", ">= 50"),
    (set_path("vehicle", {"driver": "chademo"}), "vehicle.link", "required when"),
    (set_path("vehicle", {"driver": "chademo", "link": "vcan0"}), "vehicle.link", "slcan"),
    (set_path("battery", "big"), "battery", "must be an object"),
    (set_path("battery.chemistry", "lead"), "battery.chemistry", 'one of "lfp", "nmc"'),
    (set_path("departure.schedule", {"monday": "07:30"}), "departure.schedule.monday", "not a day: use mon, tue"),
    (set_path("departure.schedule", {"sat": "7:30"}), "departure.schedule.sat", "HH:MM"),
    (set_path("departure.schedule", {"sun": 730}), "departure.schedule.sun", "HH:MM"),
    (set_path("departure.schedule", {"fri": "08:60"}), "departure.schedule.fri", "MM 00-59"),
    (set_path("departure.schedule", ["07:30"]), "departure.schedule", "must be an object"),
    (set_path("departure.week_min", [450] * 7), "departure.week_min", "unknown key"),
    (set_path("battery.pack_price_per_kwh", -1), "battery.pack_price_per_kwh", ">= 0"),
    (set_path("battery.v2g_cycles_per_day", 11), "battery.v2g_cycles_per_day", "<= 10"),
    (set_path("battery.v2g_cycles_per_day", "1"), "battery.v2g_cycles_per_day", "number"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = [BASE] + [mutate(fn) for fn, _, _ in BAD]
    return validate_many(tmp_path_factory.mktemp("config"), cases)


def test_example_config_is_valid(results):
    assert results[0] == "ok"


@pytest.mark.parametrize("i", range(len(BAD)), ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_config_names_key_and_rule(results, i):
    _, path, words = BAD[i]
    got = results[i + 1]
    assert got.startswith(path + ": "), got
    assert words in got, got


def test_wrapping_and_split_tariffs_are_accepted(tmp_path):
    ok = [
        mutate(set_path("tariff.periods", [
            {"start": "00:00", "end": "12:00", "import": 1, "export": 0.5},
            {"start": "12:00", "end": "00:00", "import": 2, "export": 1}])),
        mutate(set_path("tariff.periods", [
            {"start": "22:00", "end": "06:00", "import": 0.2, "export": 0.1},
            {"start": "06:00", "end": "22:00", "import": 0.9, "export": -0.05}])),
        mutate(set_path("departure.soc_pct", 95)),  # may exceed soc_max_pct
        mutate(set_path("mqtt.tls", False)),
        mutate(set_path("utc_offset_min", -300)),
    ]
    assert validate_many(tmp_path, ok) == ["ok"] * len(ok)


def _coverage_oracle(periods):
    # the rule as a minute map (the firmware's former code): the first
    # error in period order, then the first gap -> "path: rule" or "ok"
    owner = [0] * 1440
    for i, (s, e) in enumerate(periods):
        if s == e:
            return f"tariff.periods[{i}]: start and end must differ"
        m = s
        while m != e:
            if owner[m]:
                return f"tariff.periods[{i}]: overlaps periods[{owner[m] - 1}] at {m // 60:02d}:{m % 60:02d}"
            owner[m] = i + 1
            m = (m + 1) % 1440
    for m in range(1440):
        if not owner[m]:
            e = m
            while e < 1440 and not owner[e]:
                e += 1
            e %= 1440
            return f"tariff.periods: gap from {m // 60:02d}:{m % 60:02d} to {e // 60:02d}:{e % 60:02d}"
    return "ok"


def test_tariff_coverage_errors_match_a_minute_map(tmp_path):
    # the firmware checks coverage by interval arithmetic (no 1440-byte map
    # at boot); random schedules, many of them a tiling with one edge moved
    import random

    rnd = random.Random(7)
    cases, want = [], []
    for _ in range(300):
        n = rnd.randint(1, 6)
        cuts = sorted(rnd.sample(range(0, 1440, 15), n))
        shift = rnd.choice([0, 0, rnd.randrange(0, 1440, 15)])
        spans = [((cuts[k] + shift) % 1440, (cuts[(k + 1) % n] + shift) % 1440) for k in range(n)]
        if n == 1:
            spans = [(cuts[0], (cuts[0] + rnd.choice([0, 15, 720, 1425])) % 1440)]
        rnd.shuffle(spans)
        if rnd.random() < 0.7:
            k = rnd.randrange(n)
            s, e = spans[k]
            spans[k] = (s, (e + rnd.choice([-60, -15, 15, 60, 0])) % 1440)
        cfg = copy.deepcopy(BASE)
        cfg["tariff"].pop("seasons", None)
        cfg["tariff"]["periods"] = [{"start": f"{s // 60:02d}:{s % 60:02d}", "end": f"{e // 60:02d}:{e % 60:02d}",
                                     "import": 0.5, "export": 0.2} for s, e in spans]
        cases.append(cfg)
        want.append(_coverage_oracle(spans))
    got = validate_many(tmp_path, cases)
    kinds = {w.split(": ", 1)[-1].split(" ")[0] for w in want}
    assert {"ok", "overlaps", "gap", "start"} <= kinds, kinds  # every outcome is exercised
    bad = [(c["tariff"]["periods"], w, g) for c, w, g in zip(cases, want, got) if w != g]
    assert not bad, bad[:3]


def test_boot_hands_out_a_compact_copy_of_the_config():
    got = run_mp("config_cases", "compact_copy").json()
    assert got == {"equal": True, "new_containers": True, "new_floats": True, "summer_shared": True,
                   "valley_shared": True, "board_kept": True}, got


def test_defaults_are_filled():
    res = run_mp("config_cases", "defaults")
    assert res.json() == [200, 10, "home-charger-01", "none", 23 * 60, 7 * 60 + 30, None, "lfp"]


def test_tariff_seasons_give_each_month_its_periods():
    # examples/site.json: summer (Jul-Sep) and winter (Dec, Jan) schedules
    # with a critical peak; the other months keep tariff.periods; their
    # "HH:MM" are minutes, as in tariff.periods.
    months, july_start, valley_shared, critical_shared = run_mp("config_cases", "month_tariffs").json()
    assert months == [[7, 1.31]] + [[6, 1.05]] * 5 + [[9, 1.31]] * 3 + [[6, 1.05]] * 2 + [[7, 1.31]]
    assert july_start == 23 * 60
    # a season's period equal to one of tariff.periods is that one object
    # (kept live all day: each dict is ~190 bytes); an own one is its own
    assert valley_shared is True and critical_shared is False


def test_weekly_schedule_is_parsed_once_monday_first(tmp_path):
    path = tmp_path / "schedules.json"
    path.write_text(json.dumps([
        mutate(set_path("departure.schedule", {"mon": "06:45", "sat": None, "sun": "10:00"})),
        mutate(set_path("departure.schedule", {})),
    ]))
    got = run_mp("config_cases", "week_mins", path).json()
    # -1: the day follows departure.time (and a set_departure command)
    assert got == [[6 * 60 + 45, -1, -1, -1, -1, None, 600], [-1] * 7]


def run_firmware(config_path, timeout=20):
    return subprocess.run(
        [str(ROOT / "build" / "venv" / "bin" / "python"), str(ROOT / "tools" / "run_unix.py"), str(config_path)],
        capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("mut,expect", [
    (set_path("battery.reserve_pct", 5), "config error: battery.reserve_pct: must be >= battery.soc_min_pct"),
    (set_path("limits.charge_kw", 7), "config error: limits.charge_kw: unknown key"),
    (set_path("board", "esp8266"), 'config error: board: no board config "esp8266"'),
    (set_path("inverter.link", "uart"), 'config error: inverter.link: board "unix_sim" has no RS-485 UART'),
    (set_path("departure.schedule", {"fri": "25:00"}), 'config error: departure.schedule.fri: must be "HH:MM" with HH 00-23'),
])
def test_make_run_with_bad_config_exits_2_with_one_line(tmp_path, mut, expect):
    """The inverter at the configured address must see no traffic at all."""
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    cfg = mutate(mut)
    if cfg["inverter"]["link"].startswith("tcp:"):
        cfg["inverter"]["link"] = f"tcp:127.0.0.1:{port}"
    p = tmp_path / "site.json"
    p.write_text(json.dumps(cfg))
    res = run_firmware(p)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), res.stderr
    with pytest.raises(socket.timeout):
        srv.accept()
    srv.close()


def test_unreadable_and_non_json_config(tmp_path):
    res = run_firmware(tmp_path / "missing.json")
    assert res.returncode == 2 and "config error: config: cannot read" in res.stderr
    p = tmp_path / "broken.json"
    p.write_text("{not json")
    res = run_firmware(p)
    assert res.returncode == 2 and "config error: config: not valid JSON" in res.stderr


def test_make_run_stops_cleanly_on_sigterm_and_sigint(tmp_path):
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGINT):
        cfg = mutate(set_path("store", {"dir": str(tmp_path / "store")}))
        p = tmp_path / "site.json"
        p.write_text(json.dumps(cfg))
        proc = subprocess.Popen([str(ROOT / "build" / "venv" / "bin" / "python"), str(ROOT / "tools" / "run_unix.py"),
                                 str(p)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert '"ev": "stop"' in out


def test_default_client_id_fits_mqtt_and_an_explicit_23_is_kept(tmp_path):
    """MQTT 3.1.1 servers must accept client ids of 1..23 characters: a
    device_id of up to 32 (CONTRACT) gets a shortened default that fits and
    stays one per device; an explicit id of 23 is accepted as it is."""
    cases = [
        mutate(set_path("device_id", "a" * 23)),
        mutate(set_path("device_id", "a" * 24)),
        mutate(set_path("device_id", "a" * 32)),
        mutate(set_path("device_id", "a" * 31 + "b")),
        mutate(lambda c: (c.update(device_id="a" * 32), c["mqtt"].update(client_id="x" * 23))),
    ]
    path = tmp_path / "test_config_client_ids.json"
    path.write_text(json.dumps(cases))
    res = run_mp("config_cases", "client_ids", path).json()
    assert res[0] == "a" * 23  # fits: the device_id itself, as before
    assert res[4] == "x" * 23
    for cid in res[1:4]:
        assert len(cid) == 23 and cid.startswith("a" * 14 + "-"), cid
    assert len(set(res[1:4])) == 3  # one per device_id


def _no_inverter_traffic():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(0.2)
    return srv


def _write_bad(tmp_path, case, port):
    """-> path of a config broken the way `case` says (pointed at `port`)."""
    cfg = copy.deepcopy(BASE)
    cfg["inverter"]["link"] = f"tcp:127.0.0.1:{port}"
    cfg["store"] = {"dir": str(tmp_path / "store")}
    p = tmp_path / "site.json"
    if case == "non_utf8":
        p.write_bytes(json.dumps(cfg).encode().replace(b"home-charger-01", b"home-\xff\xfe-01"))
    elif case == "5mb":
        p.write_text(json.dumps(cfg)[:-1] + ', "pad": "' + "x" * (5 * 1024 * 1024) + '"}')
    elif case == "deep":
        # small (10 KB) but 5,000 levels deep
        p.write_text(json.dumps(cfg)[:-1] + ', "pad": ' + "[" * 5000 + "]" * 5000 + "}")
    else:
        if case == "other_port":
            cfg["board"] = "esp32_devkitc"
            cfg["inverter"]["link"] = f"tcp:127.0.0.1:{port}"
        elif case == "ca_dir":
            (tmp_path / "certs").mkdir()
            cfg["mqtt"]["tls"] = {"ca": str(tmp_path / "certs")}
        elif case == "store_unwritable":
            # a file where a directory must be: unwritable even for root
            (tmp_path / "plain").write_text("x")
            cfg["store"]["dir"] = str(tmp_path / "plain" / "store")
        elif case == "zero_key":
            cfg["command_key"] = "0" * 64
        p.write_text(json.dumps(cfg))
    return p


@pytest.mark.parametrize("case,expect", [
    ("non_utf8", "config error: config: not UTF-8 text: "),
    ("5mb", "config error: config: larger than 16384 bytes: "),
    ("deep", "config error: config: nested deeper than 8 levels: "),
    ("other_port", 'config error: board: board "esp32_devkitc" is for the esp32, this is the unix port'),
    ("ca_dir", "config error: mqtt.tls.ca: is a directory, not a file: "),
    ("store_unwritable", "config error: store.dir: not writable: "),
    ("zero_key", "config error: command_key: must not be all zeros"),
])
def test_inputs_that_crashed_or_failed_later_are_config_errors(tmp_path, case, expect):
    """Each printed a traceback (or started and failed at the first TLS
    connect, outbox write or WDT) before: now exit 2, one line, no inverter
    traffic."""
    srv = _no_inverter_traffic()
    p = _write_bad(tmp_path, case, srv.getsockname()[1])
    res = run_firmware(p)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expect), res.stderr[-2000:]
    assert "Traceback" not in res.stdout + res.stderr
    with pytest.raises(socket.timeout):
        srv.accept()
    srv.close()
    assert not (tmp_path / "store").exists()  # nothing was written either


def _shell_env():
    """The environment of `make run` typed at a shell: not a sub-make of
    `make test` (whose MAKELEVEL would make it print "make[1]:")."""
    return {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES")}


def _make_run(config_path, timeout=30):
    return subprocess.run(["make", "-s", "--no-print-directory", "run", f"CONFIG={config_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=_shell_env())


def test_make_run_exits_2_on_a_config_error(tmp_path):
    p = _write_bad(tmp_path, "zero_key", 1)
    res = _make_run(p)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[0] == "config error: command_key: must not be all zeros"
    # GNU make's own line names the firmware's code
    assert lines[1:] == ["make: *** [Makefile:%d: run] Error 2" % _run_line()], res.stderr


def _run_line():
    """The Makefile line of the `run` recipe's launcher command."""
    for i, line in enumerate((ROOT / "Makefile").read_text().splitlines(), 1):
        if line.startswith("\t") and "tools/run_unix.py" in line:
            return i
    raise AssertionError("no run_unix.py line in the Makefile")


def test_launcher_passes_other_exit_codes_through_and_make_names_them(tmp_path):
    """tools/run_unix.py exits with the firmware's own code (here a SIGKILL:
    137, as a shell reports it). GNU make itself can only exit 0 or 2
    (POSIX): `make run` exits 2 and its Error line carries the code."""
    cfg = mutate(set_path("store", {"dir": str(tmp_path / "store")}))
    p = tmp_path / "site.json"
    p.write_text(json.dumps(cfg))
    for via_make in (False, True):
        cmd = (["make", "-s", "--no-print-directory", "run", f"CONFIG={p}"] if via_make else
               [str(ROOT / "build" / "venv" / "bin" / "python"), str(ROOT / "tools" / "run_unix.py"), str(p)])
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=_shell_env())
        fw = None
        try:
            # the firmware runs: its first event line
            assert select.select([proc.stdout], [], [], 20)[0] and proc.stdout.readline()
            fw = _firmware_under(proc.pid)
            os.kill(fw, signal.SIGKILL)
            fw = None
            out, err = proc.communicate(timeout=20)
        finally:
            if fw is not None:  # a failed assertion above: leave nothing running
                os.kill(fw, signal.SIGKILL)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if via_make:
            assert proc.returncode == 2
            assert err.strip().splitlines()[-1] == "make: *** [Makefile:%d: run] Error 137" % _run_line(), err
        else:
            assert proc.returncode == 137, err


def _firmware_under(pid):
    """The pid of the firmware's process started (through make and the
    launcher) by process `pid`."""
    main = str(ROOT / "firmware" / "main.py").encode()
    todo = [pid]
    while todo:
        p = todo.pop()
        for t in os.listdir(f"/proc/{p}/task"):
            with open(f"/proc/{p}/task/{t}/children") as f:
                children = [int(c) for c in f.read().split()]
            for c in children:
                with open(f"/proc/{c}/cmdline", "rb") as f:
                    if main in f.read().split(b"\0"):
                        return c
                todo.append(c)
    raise AssertionError("no firmware process under %d" % pid)


def test_wear_cost_follows_chemistry_and_pack_price_unless_given(tmp_path):
    def battery(**keys):
        c = copy.deepcopy(BASE)
        for k in ("wear_cost_per_kwh", "chemistry", "pack_price_per_kwh"):
            c["battery"].pop(k, None)
        c["battery"].update(keys)
        return c

    path = tmp_path / "wear.json"
    path.write_text(json.dumps([battery(), battery(chemistry="nmc"), battery(pack_price_per_kwh=1000),
                                battery(wear_cost_per_kwh=0.02, chemistry="nmc")]))
    got = run_mp("config_cases", "wear_costs", path).json()
    # 700 per kWh of capacity x the share of the pack a cycled kWh wears
    # (1.5e-4 LFP, 1.1e-3 NMC: config.py, from tools/sim/wear.py's models)
    assert got[0] == pytest.approx(0.105) and got[1] == pytest.approx(0.77) and got[2] == pytest.approx(0.15)
    assert got[3] == 0.02  # given: kept as written, whatever the chemistry
