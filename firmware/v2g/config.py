# Site config: one JSON file, validated before anything else starts.
#
# validate() returns a new dict with every optional key filled in, or raises
# ConfigError naming the key path and the rule broken. Unknown keys are errors:
# a typo must not silently drop a limit. The rules are CONTRACT.md section 2;
# optional keys and their defaults are listed in README.md.
#
# Links are parsed here, once. Next to each link string (kept as written: its
# CONTRACT meaning does not change) the validated config holds the parsed
# value that board.py and hal/ switch on; nothing below this module parses a
# link string again:
#   inverter.link_parsed  ("uart",) | ("tcp", HOST, PORT)
#   vehicle.link_parsed   None (no vehicle.link) | ("can",) |
#                         ("slcan_pty", PATH) | ("slcan_tcp", HOST, PORT)
# and, the same way, the weekly departures (CONTRACT section 8):
#   departure.week_min    None (no departure.schedule) | 7 entries, Monday
#                         first: a minute of the local day, None (no
#                         departure that day) or -1 (departure.time)
# The tariff's seasons (a summer and a winter day, as Chinese provinces
# publish them) are replaced by what the plan looks up, as the periods'
# "HH:MM" are by minutes (the written list of seasons is not kept: a dozen
# period dicts more would stay live all day in a ~100 KB heap):
#   tariff.seasons        None (none given) | 12 entries, January first:
#                         that month's validated periods, or None (the
#                         month keeps tariff.periods)
# HOST is a str, PORT an int in 1..65535. A raw config that has a
# "link_parsed" key is refused like any unknown key.

from v2g.clock import hhmm_to_min as _hhmm
from v2g.clock import min_to_hhmm

# Power limits are bounded so every fixed-point product in the control kernel
# stays inside +-2**29 (31-bit small ints on the boards).
_MAX_W = const(1000000)
_MAX_WH = const(10000000)
# MQTT 3.1.1 (3.1.3.1): a server must accept client ids of 1..23 characters;
# a longer one may be refused at every connect.
_MAX_CLIENT_ID = const(23)
# A site config is 1-10 KB (48 tariff periods, every optional key, pretty
# printed); the file is read whole into a heap of ~100 KB, so it is bounded
# before it is read.
MAX_BYTES = const(16384)
# A config is 6 levels deep (tariff.seasons[i].periods[j]); json.loads recurses per level.
_MAX_DEPTH = const(8)


class ConfigError(Exception):
    def __init__(self, path, rule):
        super().__init__(path + ": " + rule)
        self.path = path
        self.rule = rule


# --- value checkers: each returns the (possibly normalised) value or raises


def _num(path, v, lo=None, hi=None):
    # bool is an int in Python; a JSON true must not pass as 1.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(path, "must be a number")
    if v != v or v in (float("inf"), float("-inf")):
        raise ConfigError(path, "must be a finite number")
    if lo is not None and v < lo:
        raise ConfigError(path, "must be >= " + str(lo))
    if hi is not None and v > hi:
        raise ConfigError(path, "must be <= " + str(hi))
    return v


def _int(path, v, lo=None, hi=None):
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(path, "must be an integer")
    return _num(path, v, lo, hi)


def _pct(path, v):
    return _num(path, v, 0, 100)


def _bool(path, v):
    if not isinstance(v, bool):
        raise ConfigError(path, "must be true or false")
    return v


def _str(path, v, max_len=255):
    if not isinstance(v, str) or not v:
        raise ConfigError(path, "must be a non-empty string")
    if len(v) > max_len:
        raise ConfigError(path, "must be at most " + str(max_len) + " characters")
    return v


def hhmm_to_min(path, v):
    """'HH:MM' -> minutes after midnight."""
    try:
        return _hhmm(v)
    except ValueError as e:
        raise ConfigError(path, str(e))


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


def _schedule(path, v):
    # {"mon": "07:30", ..., "sun": null} -> departure.week_min (see top)
    if not isinstance(v, dict):
        raise ConfigError(path, 'must be an object like {"mon": "07:30", "sat": null}')
    for k in v:
        if k not in DAYS:
            raise ConfigError(path + "." + k, "not a day: use " + ", ".join(DAYS))
    out = []
    for k in DAYS:
        if k not in v:
            out.append(-1)
        elif v[k] is None:
            out.append(None)
        else:
            out.append(hhmm_to_min(path + "." + k, v[k]))
    return tuple(out)


def _device_id(path, v):
    _str(path, v, 32)
    for c in v:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c == "-"):
            raise ConfigError(path, "must match [a-z0-9-]{1,32}")
    return v


def _hex64(path, v):
    if not isinstance(v, str) or len(v) != 64:
        raise ConfigError(path, "must be 64 hex characters")
    for c in v:
        if c not in "0123456789abcdefABCDEF":
            raise ConfigError(path, "must be 64 hex characters")
    return v


def _command_key(path, v):
    # A placeholder key (zeros, "ff..", "abab..") is one anybody can sign
    # with: refused, like a missing key.
    _hex64(path, v)
    low = v.lower()
    if low == "0" * 64:
        raise ConfigError(path, "must not be all zeros")
    if low == low[:2] * 32:
        raise ConfigError(path, "must not be one byte repeated")
    return v


def _host_port(path, text):
    # "HOST:PORT"; HOST may be a name or an IPv4 address.
    i = text.rfind(":")
    if i <= 0 or not text[i + 1:].isdigit():
        raise ConfigError(path, 'must be "HOST:PORT"')
    port = int(text[i + 1:])
    if not 1 <= port <= 65535:
        raise ConfigError(path, "port must be 1..65535")
    return text[:i], port


def _inverter_link(path, v):
    """-> the parsed link (see the header)."""
    if v == "uart":
        return ("uart",)
    if isinstance(v, str) and v.startswith("tcp:"):
        host, port = _host_port(path, v[4:])
        return ("tcp", host, port)
    raise ConfigError(path, 'must be "uart" or "tcp:HOST:PORT"')


def _vehicle_link(path, v):
    """-> the parsed link (see the header)."""
    if v == "can":
        return ("can",)
    if isinstance(v, str) and v.startswith("slcan:") and len(v) > 6:
        return ("slcan_pty", v[6:])
    if isinstance(v, str) and v.startswith("slcan-tcp:"):
        host, port = _host_port(path, v[10:])
        return ("slcan_tcp", host, port)
    raise ConfigError(path, 'must be "can", "slcan:PATH" or "slcan-tcp:HOST:PORT"')


def parse_link(key, text):
    """ "inverter.link" or "vehicle.link" and its string -> the parsed value
    validate() stores next to it; raises ConfigError naming the key. For
    tools and tests that build a link without a whole config."""
    if key == "inverter.link":
        return _inverter_link(key, text)
    if key == "vehicle.link":
        return _vehicle_link(key, text)
    raise ValueError(key)


def _ntp_server(path, v):
    # "HOST" or "HOST:PORT": checked here, not at the first SNTP attempt
    _str(path, v)
    if ":" in v:
        _host_port(path, v)
    return v


def _file(path, v):
    # Checked here, not at the first TLS connect: a directory or an
    # unreadable file would otherwise pass and fail every reconnect.
    _str(path, v)
    import os

    try:
        mode = os.stat(v)[0]
    except OSError:
        raise ConfigError(path, "file not found: " + v)
    if mode & 0xF000 == 0x4000:
        raise ConfigError(path, "is a directory, not a file: " + v)
    if mode & 0xF000 != 0x8000:
        raise ConfigError(path, "not a regular file: " + v)
    try:
        open(v, "rb").close()
    except OSError:
        raise ConfigError(path, "cannot read " + v)
    return v


def _choice(*options):
    def check(path, v):
        if v not in options:
            shown = ['"' + o + '"' if isinstance(o, str) else str(o) for o in options]
            raise ConfigError(path, "must be one of " + ", ".join(shown))
        return v

    return check


def _rng(fn, lo=None, hi=None):
    return lambda path, v: fn(path, v, lo, hi)


# --- schema: key -> (checker, default); REQUIRED marks the contract's keys.
# (checker, default, parsed_key): the value is kept as given and what the
# checker returns goes under parsed_key (None when the key is left out).

REQUIRED = object()

_TLS_SCHEMA = {
    "ca": (_file, REQUIRED),
    "cert": (_file, None),
    "key": (_file, None),
}


def _tls(path, v):
    if v is False:
        return False
    if not isinstance(v, dict):
        raise ConfigError(path, 'must be false or {"ca": ..., "cert": ..., "key": ...}')
    out = _section(path, v, _TLS_SCHEMA)
    if (out["cert"] is None) != (out["key"] is None):
        raise ConfigError(path, '"cert" and "key" must be given together')
    return out


def _periods(path, v):
    if not isinstance(v, list) or not v:
        raise ConfigError(path, "must be a non-empty list")
    if len(v) > 48:
        raise ConfigError(path, "at most 48 periods")
    out = []
    for i, p in enumerate(v):
        ppath = path + "[" + str(i) + "]"
        out.append(_section(ppath, p, _PERIOD_SCHEMA))
    _check_coverage(path, out)
    return out


def _seasons(path, v):
    # [{"months": [6, 7, 8, 9], "periods": [...]}, ...] -> 12 entries by
    # month (see top); a month no season names keeps tariff.periods
    if not isinstance(v, list) or not v:
        raise ConfigError(path, "must be a non-empty list")
    if len(v) > 12:
        raise ConfigError(path, "at most 12 seasons")
    by_month = [None] * 12
    for i, season in enumerate(v):
        spath = path + "[" + str(i) + "]"
        out = _section(spath, season, _SEASON_SCHEMA)
        for m in out["months"]:
            if by_month[m - 1] is not None:
                raise ConfigError(spath + ".months", "month %d is in another season too" % m)
            by_month[m - 1] = out["periods"]
    return tuple(by_month)


def _months(path, v):
    if not isinstance(v, list) or not v:
        raise ConfigError(path, "must be a non-empty list of months 1-12")
    for m in v:
        if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= 12:
            raise ConfigError(path, "months are integers 1-12")
        if v.count(m) > 1:
            raise ConfigError(path, "month %d listed twice" % m)
    return v


_PERIOD_SCHEMA = {
    "start": (hhmm_to_min, REQUIRED),
    "end": (hhmm_to_min, REQUIRED),
    "import": (_num, REQUIRED),
    "export": (_num, REQUIRED),
}


_SEASON_SCHEMA = {
    "name": (lambda p, v: _str(p, v, 32), None),  # "summer": for the reader, nothing depends on it
    "months": (_months, REQUIRED),
    "periods": (_periods, REQUIRED),
}


def _check_coverage(path, periods):
    # Each minute of the day must belong to exactly one period. start == end
    # would be an empty (or ambiguous full-day) period: refused. Interval
    # arithmetic, not a minute map: the map was a 1440-byte block per
    # schedule at boot, where the heap is at its peak (with seasons it was
    # where a 104 KB ROMFS heap ran out).
    for i, p in enumerate(periods):
        s, e = p["start"], p["end"]
        if s == e:
            raise ConfigError(path + "[" + str(i) + "]", "start and end must differ")
        n = (e - s) % 1440
        # the first minute of this period (walking from its start) that an
        # earlier one holds; earlier ones do not overlap each other
        first, owner = n, -1
        for j in range(i):
            q = periods[j]
            if _holds(q, s):
                d = 0  # starts inside period j
            else:
                d = (q["start"] - s) % 1440  # period j starts d minutes in
            if d < first:
                first, owner = d, j
        if owner >= 0:
            raise ConfigError(
                path + "[" + str(i) + "]",
                "overlaps periods[" + str(owner) + "] at " + min_to_hhmm((s + first) % 1440),
            )
    # the first free minute is 0 or just after a period; its gap runs to
    # the next period's start (or midnight)
    gap = 1440
    for m in [0] + [p["end"] for p in periods]:
        if m < gap and not any(_holds(p, m) for p in periods):
            gap = m
    if gap < 1440:
        e = 1440
        for p in periods:
            if gap < p["start"] < e:
                e = p["start"]
        raise ConfigError(path, "gap from " + min_to_hhmm(gap) + " to " + min_to_hhmm(e % 1440))


def _holds(p, m):
    # minute m of the day is in period p (which may wrap past midnight)
    return (m - p["start"]) % 1440 < (p["end"] - p["start"]) % 1440


def min_to_hhmm(m):
    return "%02d:%02d" % (m // 60, m % 60)


SCHEMA = {
    "device_id": (_device_id, REQUIRED),
    "board": (_str, REQUIRED),
    "utc_offset_min": (_rng(_int, -720, 840), 0),
    "inverter": {
        "driver": (_choice("sunspec"), REQUIRED),
        "link": (_inverter_link, REQUIRED, "link_parsed"),
        "unit": (_rng(_int, 1, 247), REQUIRED),
        "baud": (_rng(_int, 1200, 1000000), None),  # None: the board config's
        "base_addr": (_rng(_int, 0, 65535), None),  # None: scan 40000, 0, 50000
        "timeout_ms": (_rng(_int, 10, 5000), 100),
        "retries": (_rng(_int, 0, 5), 2),
        "revert_s": (_rng(_int, 2, 3600), 10),
    },
    "battery": {
        "capacity_wh": (_rng(_num, 1, _MAX_WH), REQUIRED),
        "soc_min_pct": (_pct, REQUIRED),
        "soc_max_pct": (_pct, REQUIRED),
        "reserve_pct": (_pct, REQUIRED),
        "charge_eff": (_rng(_num, 0.5, 1), 0.93),
        "discharge_eff": (_rng(_num, 0.5, 1), 0.93),
        "wear_cost_per_kwh": (_rng(_num, 0, 1000), None),  # None: from the pack price (below)
        "chemistry": (_choice("lfp", "nmc"), "lfp"),
        "pack_price_per_kwh": (_rng(_num, 0, 100000), 700),
        "v2g_cycles_per_day": (_rng(_num, 0, 10), None),  # None: no cap
    },
    "limits": {
        "charge_w": (_rng(_int, 1, _MAX_W), REQUIRED),
        "discharge_w": (_rng(_int, 0, _MAX_W), REQUIRED),
        "ramp_w_per_s": (_rng(_int, 1, _MAX_W), REQUIRED),
        "min_w": (_rng(_int, 0, _MAX_W), 500),
    },
    "control": {
        "period_ms": (_rng(_int, 50, 5000), None),  # None: 200, or 100 with a CHAdeMO vehicle
        "stale_periods": (_rng(_int, 2, 50), 5),
    },
    "grid": {
        "nominal_hz": (_choice(50, 60), 50),
        "freq_response": (_bool, True),
        "deadband_mhz": (_rng(_int, 0, 2000), 200),
        "droop_pct": (_rng(_num, 1, 20), 5),
    },
    "departure": {
        "time": (hhmm_to_min, REQUIRED),
        "soc_pct": (_pct, REQUIRED),
        "buffer_min": (_rng(_int, 0, 240), 30),
        "schedule": (_schedule, None, "week_min"),
    },
    "tariff": {
        "periods": (_periods, REQUIRED),
        "seasons": (_seasons, None),
        "currency": (lambda p, v: _str(p, v, 8), REQUIRED),
    },
    "plan": {
        "replan_s": (_rng(_int, 5, 3600), 60),
    },
    "mqtt": {
        "host": (_str, REQUIRED),
        "port": (_rng(_int, 1, 65535), REQUIRED),
        "tls": (_tls, REQUIRED),
        "keepalive_s": (_rng(_int, 5, 3600), 60),
        "user": (_str, None),
        "password": (_str, None),
        "client_id": (lambda p, v: _str(p, v, _MAX_CLIENT_ID), None),  # None: from device_id
        "telemetry_s": (_rng(_int, 1, 3600), 10),
        "outbox_records": (_rng(_int, 16, 100000), 2000),
    },
    "vehicle": {
        "driver": (_choice("none", "chademo"), "none"),
        "link": (_vehicle_link, None, "link_parsed"),
        "soc_mismatch_pct": (_rng(_num, 1, 50), 10),
        # the DC power stage, as announced to the car (0x108/0x208)
        "dc_max_voltage_v": (_rng(_int, 50, 1000), 500),
        "dc_min_voltage_v": (_rng(_int, 0, 1000), 150),
        "dc_max_current_a": (_rng(_int, 1, 255), 15),
        "dc_max_discharge_current_a": (_rng(_int, 0, 255), 15),
    },
    "store": {
        "dir": (_str, None),  # None: the board config's store_dir
    },
    # Wall time (v2g.timesync): a board's RTC starts at 2000-01-01, and
    # tariff, departure and dispatch all need the real time.
    "ntp": {
        "server": (_ntp_server, "pool.ntp.org"),  # "host" or "host:port" (SNTP, UDP)
        "resync_s": (_rng(_int, 60, 5 * 86400), 21600),  # RTC drift; < half the ticks period
    },
    # A board's Wi-Fi (esp32, Pico W); none: the network is up already
    # (the unix port, or brought up by the installer's own boot.py)
    "wifi": {
        "ssid": (lambda p, v: _str(p, v, 32), None),
        "password": (lambda p, v: _str(p, v, 64), None),
    },
    "command_key": (_command_key, REQUIRED),
}


def _section(path, value, schema):
    if not isinstance(value, dict):
        raise ConfigError(path or "config", "must be an object")
    for k in value:
        if k not in schema:
            raise ConfigError(_join(path, k), "unknown key")
    # Missing required keys are reported before bad values, so the message
    # does not depend on dict order (MicroPython dicts are unordered).
    for k, spec in schema.items():
        if k not in value:
            if isinstance(spec, dict) and _has_required(spec) or not isinstance(spec, dict) and spec[1] is REQUIRED:
                raise ConfigError(_join(path, k), "required")
    out = {}
    for k, spec in schema.items():
        kpath = _join(path, k)
        if isinstance(spec, dict):
            out[k] = _section(kpath, value.get(k, {}), spec)
        elif len(spec) == 3:
            if k in value:
                out[spec[2]] = spec[0](kpath, value[k])
                out[k] = value[k]
            else:
                out[spec[2]] = None
                out[k] = spec[1]
        elif k in value:
            out[k] = spec[0](kpath, value[k])
        else:
            out[k] = spec[1]
    return out


def _has_required(schema):
    for spec in schema.values():
        if isinstance(spec, dict):
            if _has_required(spec):
                return True
        elif spec[1] is REQUIRED:
            return True
    return False


def _join(path, key):
    return path + "." + key if path else key


def _check_order(cfg):
    b = cfg["battery"]
    if not b["soc_min_pct"] <= b["reserve_pct"]:
        raise ConfigError("battery.reserve_pct", "must be >= battery.soc_min_pct")
    if not b["reserve_pct"] <= b["soc_max_pct"]:
        raise ConfigError("battery.soc_max_pct", "must be >= battery.reserve_pct")
    if not b["reserve_pct"] <= cfg["departure"]["soc_pct"]:
        raise ConfigError("departure.soc_pct", "must be >= battery.reserve_pct")
    if cfg["limits"]["min_w"] > cfg["limits"]["charge_w"]:
        raise ConfigError("limits.min_w", "must be <= limits.charge_w")
    v = cfg["vehicle"]
    if v["driver"] != "none" and v["link"] is None:
        raise ConfigError("vehicle.link", "required when vehicle.driver is not \"none\"")
    c = cfg["control"]
    if v["driver"] == "chademo":
        # CHAdeMO frames go out every 100 ms, from the control loop
        if c["period_ms"] is not None and c["period_ms"] > 100:
            raise ConfigError("control.period_ms", "must be <= 100 with vehicle.driver \"chademo\" (100 ms CAN cycle)")
        if c["period_ms"] is None:
            c["period_ms"] = 100
    elif c["period_ms"] is None:
        c["period_ms"] = 200
    if v["dc_min_voltage_v"] >= v["dc_max_voltage_v"]:
        raise ConfigError("vehicle.dc_min_voltage_v", "must be < vehicle.dc_max_voltage_v")


def check_board(cfg, board):
    """The config's links must exist on the chosen board."""
    if cfg["inverter"]["link_parsed"][0] == "uart" and not board.get("rs485"):
        raise ConfigError("inverter.link", 'board "' + cfg["board"] + '" has no RS-485 UART')
    vlink = cfg["vehicle"]["link_parsed"]
    if vlink is not None and vlink[0] == "can" and not board.get("can"):
        raise ConfigError("vehicle.link", 'board "' + cfg["board"] + '" has no CAN controller')


def client_id(device_id):
    """The default MQTT client id: the device_id when it fits in 23
    characters, else its first 14 characters, "-" and 8 hex digits of its
    SHA-256 (23 in all): still readable, still one per device_id."""
    if len(device_id) <= _MAX_CLIENT_ID:
        return device_id
    import binascii
    import hashlib

    h = binascii.hexlify(hashlib.sha256(device_id.encode()).digest()).decode()
    return device_id[:14] + "-" + h[:8]


# What one kWh cycled through the pack (out and back in, battery side)
# costs, as a share of the pack's price per kWh of capacity: the capacity
# one equivalent full cycle takes, at the cycling the plan causes (about one
# 50 % cycle a day at 25 C, in the second half of a pack's first year),
# over the 20 % of capacity a pack may lose before it is replaced (80 %
# state of health). From the models make year uses (tools/sim/wear.py):
# LFP (BLAST-Lite lfp_gr_250AhPrismatic) 3.0e-5 of capacity per full cycle
# -> 1.5e-4; NMC (Schmalstieg 2014) 2.2e-4 -> 1.1e-3. Calendar ageing is not
# in it: it runs whether the car cycles or not.
_WEAR_SHARE = {"lfp": 1.5e-4, "nmc": 1.1e-3}


def validate(raw):
    cfg = _section("", raw, SCHEMA)
    _check_order(cfg)
    if cfg["mqtt"]["client_id"] is None:
        cfg["mqtt"]["client_id"] = client_id(cfg["device_id"])
    b = cfg["battery"]
    if b["wear_cost_per_kwh"] is None:
        # an explicit wear_cost_per_kwh keeps its meaning; without one the
        # chemistry and the pack's price say what a cycled kWh costs
        b["wear_cost_per_kwh"] = b["pack_price_per_kwh"] * _WEAR_SHARE[b["chemistry"]]
    if cfg["tariff"]["seasons"] is not None:
        _share_periods(cfg["tariff"])
    return cfg


def _share_periods(tariff):
    # A season's period equal to one held already (in tariff.periods or an
    # earlier season) becomes that one object: seasons mostly repeat the
    # base day's valley and flat periods, and each period dict is ~190
    # bytes kept live all day on a 64-bit port (the example's 16 were 3 KB).
    held = {}
    for p in tariff["periods"]:
        held[(p["start"], p["end"], p["import"], p["export"])] = p
    done = []
    for ps in tariff["seasons"]:
        if ps is None or any(ps is d for d in done):  # a season's list is in each of its months
            continue
        done.append(ps)
        for i, p in enumerate(ps):
            ps[i] = held.setdefault((p["start"], p["end"], p["import"], p["export"]), p)


_READ_CHUNK = const(1024)


def load(path):
    """Read and validate a config file. Raises ConfigError (path 'config' for
    an unreadable, oversized, non-UTF-8, too deeply nested or non-JSON file)."""
    import json

    from v2g import unload
    from v2g.jsondepth import too_deep

    try:
        with open(path, "rb") as f:
            # in small pieces, stopping once past the limit: "too large" is
            # told without reading (or stat-ing: a pipe has no size) the
            # rest, and a 1 KB config costs 1 KB, not a 16 KB buffer at the
            # moment the boot heap is tightest
            parts = []
            n = 0
            while n <= MAX_BYTES:
                b = f.read(_READ_CHUNK)
                if not b:
                    break
                parts.append(b)
                n += len(b)
            data = b"".join(parts)
            del parts
    except OSError:
        raise ConfigError("config", "cannot read " + path)
    if len(data) > MAX_BYTES:
        raise ConfigError("config", "larger than " + str(MAX_BYTES) + " bytes: " + path)
    deep = too_deep(data, _MAX_DEPTH)
    unload("v2g.jsondepth")  # used once at boot, like this module
    if deep:
        raise ConfigError("config", "nested deeper than " + str(_MAX_DEPTH) + " levels: " + path)
    try:
        text = data.decode()
    except UnicodeError:
        raise ConfigError("config", "not UTF-8 text: " + path)
    del data
    try:
        raw = json.loads(text)
    except ValueError:
        raise ConfigError("config", "not valid JSON: " + path)
    return validate(raw)


# sys.platform -> the board config's "chip"; any other platform is the unix port
_PLATFORM_CHIP = {"esp32": "esp32", "rp2": "rp2040"}


def check_here(cfg, board):
    """At start-up on the device itself (not in `make deploy`, which
    validates a board's config on the host): the board config is for this
    port, and the state directory can be written. Else they fail after
    the inverter was reached: a traceback (machine.WDT missing on the unix
    port), or outbox, seq and settings writes failing one by one."""
    import sys

    here = _PLATFORM_CHIP.get(sys.platform, "unix")
    chip = board.get("chip")
    if chip != here:
        raise ConfigError("board", 'board "' + cfg["board"] + '" is for the ' + str(chip)
                          + ", this is the " + here + " port (" + sys.platform + ")")
    from v2g import storedir

    d = storedir.store_dir(cfg, board)
    try:
        storedir.probe(d)
    except OSError as e:
        raise ConfigError("store.dir", "not writable: " + d + " (" + _errno_name(e) + ")")


def _errno_name(e):
    # an OSError from open() shows as a bare number on MicroPython, and
    # errno.errorcode names only some
    n = e.args[0] if e.args else None
    try:
        import errno

        return errno.errorcode[n]
    except (ImportError, AttributeError, KeyError):
        return "errno " + str(n)


def load_board(boards_dir, name):
    import json

    for c in name:
        if not ("a" <= c <= "z" or "0" <= c <= "9" or c in "_-"):
            raise ConfigError("board", "must be a board name like esp32_devkitc")
    try:
        with open(boards_dir + "/" + name + ".json") as f:
            return json.loads(f.read())
    except OSError:
        raise ConfigError("board", 'no board config "' + name + '" in ' + boards_dir)
    except ValueError:
        raise ConfigError("board", "board config " + name + ".json is not valid JSON")


def redacted(cfg):
    """A copy safe to print: secrets replaced."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            v = redacted(v)
        elif k in ("command_key", "password", "key") and v:
            v = "***"
        out[k] = v
    return out
