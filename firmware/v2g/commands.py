# Signed remote commands (CONTRACT section 4): verify, check, persist, hand
# over to the control loop. Runs in the cloud thread.
#
# One thread owns a Commands object and its files (cmd_seq.json,
# settings.json): the main thread, which runs the cloud link and, on a
# board, the REPL once Ctrl-C has stopped that link (tech.factory_reset ->
# forget(); tech.cloud() runs the link on this same thread again). The
# control thread never touches it: what it changes reaches the loop through
# the inbox.
#
# Order of checks: size -> JSON envelope (nesting, keys) -> signature -> body
# fields (no key twice, seq bounded) -> replay (seq) -> op -> clock set /
# expiry -> args -> room in the control loop's inbox. A rejected command changes nothing;
# an accepted one holds a slot in the inbox, persists the new seq (and the
# setting it changes), then is queued for the control loop, which applies it
# at its next tick: an accepted command is never dropped.
#
# Commands are checked against the settings as they will be once every
# command accepted before is applied (`will`), not against the control
# loop's values of the moment: set_departure 50 % then at once set_reserve
# 60 % is refused, though the loop still runs the old departure.
import json
from array import array

from micropython import const

from v2g import auth
from v2g.clock import hhmm_to_min, min_to_hhmm
from v2g.store import JsonFile, remove

_MAX_PAYLOAD = const(4096)
_MAX_DEPTH = const(8)  # a command is 3 levels deep; 4 KB of "[" would be 4,096 lists
_MAX_KEYS = const(64)  # keys in one JSON text; a command has at most 7
_MAX_ID = const(36)
_MAX_DISPATCH_S = const(4 * 3600)
# The largest seq accepted: 2**53 - 1, the largest integer every JSON
# implementation (a double) holds exactly; a millisecond timestamp reaches
# it in the year 287,000. Without a bound one signed seq of 2**63 would
# lock out every later command for good (the seq survives a factory reset).
# A big int on a board: compared once per command, never per tick.
_MAX_SEQ = 9007199254740991
OPS = ("dispatch", "set_reserve", "set_departure", "set_mode", "clear_fault")
_NEED_TIME = ("dispatch",)
MODES = ("auto", "idle", "charge_now")


class Reject(Exception):
    def __init__(self, code, detail):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v):
    return (isinstance(v, int) or isinstance(v, float)) and not isinstance(v, bool) and v == v


class Commands:
    def __init__(self, cfg, clock, store_dir, shared):
        """Made after the control loop applied settings.json: its values
        are where `will` starts."""
        self.cfg = cfg
        self.clock = clock
        self.shared = shared  # the control loop's port (v2g.shared)
        self.key = auth.key_from_hex(cfg["command_key"])
        self.seq_file = JsonFile(store_dir + "/cmd_seq.json", {"seq": -1})
        self.last_seq = self.seq_file.load()["seq"]
        self.settings = JsonFile(store_dir + "/settings.json", {})
        self.posted = 0  # the control loop's number of the last action posted
        self.cid = None  # the id of the command being handled, once known
        # the settings as they will be once every accepted command is
        # applied, in settings.json's form; the one place commands check against
        f = shared.status.field  # four fields, no 750-byte copy of the record at boot
        self.will = {"reserve_pct": f("reserve_cpct") / 100, "departure": [f("dep_min"), f("dep_cpct") / 100],
                     "mode": f("user_mode")}

    def handle(self, payload):
        """payload: bytes or None (None: too large, already discarded).
        Returns the cmd/result dict. Its id is the command's whenever the
        body parsed as an object with a string id of at most 36 characters,
        whatever the error."""
        self.cid = None
        try:
            res = self._execute(self._parse(payload))
            return {"id": self.cid, "ok": True, "error": None, "detail": res}
        except Reject as r:
            return {"id": self.cid, "ok": False, "error": r.code, "detail": r.detail}

    def forget(self):
        """tech.factory_reset(): settings.json goes, so after the next start
        the site config's reserve and departure hold; until then the
        control loop keeps the ones it has. A later command must fit both:
        `will` keeps the higher reserve and the lower departure SoC."""
        remove(self.settings.path)
        w, b, d = self.will, self.cfg["battery"], self.cfg["departure"]
        w["reserve_pct"] = max(w["reserve_pct"], b["reserve_pct"])
        w["departure"] = [d["time"], min(w["departure"][1], d["soc_pct"])]
        w["mode"] = "auto"
        w.pop("dispatch", None)

    # --- envelope and body

    def _parse(self, payload):
        if payload is None or len(payload) > _MAX_PAYLOAD:
            raise Reject("bad_payload", "payload larger than %d bytes" % _MAX_PAYLOAD)
        why = _scan(payload)
        if why:
            raise Reject("bad_payload", why)
        try:
            outer = json.loads(payload)
        except (ValueError, MemoryError, RuntimeError):
            raise Reject("bad_payload", "not JSON")
        if not isinstance(outer, dict) or not isinstance(outer.get("body"), str) or not isinstance(outer.get("sig"), str):
            raise Reject("bad_payload", 'need {"body": "<JSON text>", "sig": "<hex>"}')
        body_bytes = outer["body"].encode()
        # nesting and the number of keys before parsing (they cost heap);
        # a key twice is refused after the signature, with the id
        why = _scan(body_bytes, False)
        if why and why is not _DUPLICATE:
            raise Reject("bad_payload", "body " + why)
        try:
            body = json.loads(body_bytes)
        except (ValueError, MemoryError, RuntimeError):
            raise Reject("bad_payload", "body is not JSON")
        if isinstance(body, dict):
            cid = body.get("id")
            if isinstance(cid, str) and len(cid) <= _MAX_ID:
                self.cid = cid
        if not auth.verify(self.key, body_bytes, outer["sig"]):
            raise Reject("bad_sig", "signature does not match the body")
        if not isinstance(body, dict):
            raise Reject("bad_payload", "body must be an object")
        if why:
            raise Reject("bad_payload", "body " + why)
        for name, check in (("id", lambda v: isinstance(v, str) and 0 < len(v) <= _MAX_ID),
                            ("seq", _is_int), ("exp", _is_int), ("op", lambda v: isinstance(v, str)),
                            ("args", lambda v: isinstance(v, dict))):
            if name not in body or not check(body[name]):
                raise Reject("bad_payload", "field %s missing or of the wrong type" % name)
        if body["seq"] > _MAX_SEQ:
            raise Reject("bad_payload", "seq above 2**53-1")
        return body

    def _execute(self, body):
        if body["seq"] <= self.last_seq:
            raise Reject("replay", "seq %d is not larger than %d" % (body["seq"], self.last_seq))
        op = body["op"]
        if op not in OPS:
            raise Reject("bad_op", "unknown op " + op[:32])
        now = self.clock.time()
        if not self.clock.trusted():
            # A board before SNTP answered (it boots at 2000-01-01): `exp`
            # cannot be checked and `until` means nothing, so an op whose
            # meaning is a time is refused; the others do not depend on it.
            if op in _NEED_TIME:
                raise Reject("clock_not_set", "the controller's clock is not set yet (SNTP): %s needs the time" % op)
        elif body["exp"] < now:
            raise Reject("expired", "expired at %d, now %d" % (body["exp"], now))
        action, detail, setting = getattr(self, "_op_" + op)(body["args"], now)
        # Room in the control loop's inbox first, held for this command:
        # a flood is bounded before anything is accepted, and no other
        # thread can take the slot between this check and the post.
        inbox = self.shared.inbox
        if not inbox.reserve():
            raise Reject("busy", "%d actions wait for the control loop's next tick; nothing changed, send again"
                         % inbox.size)
        try:
            # persist before acting: a seq that was acted on is never accepted again
            self.seq_file.save({"seq": body["seq"]})
            self.last_seq = body["seq"]
            if setting:
                s = self.settings.load()
                s.update(setting)
                self.settings.save(s)
        except BaseException:
            inbox.release()
            raise
        self.posted = self.shared.post(action, True)
        if setting:
            self.will.update(setting)
        return detail

    # --- ops: each returns (action for the control loop, detail, setting to persist)

    def _op_dispatch(self, a, now):
        _only(a, ("ev_w", "until"))
        ev_w, until = a.get("ev_w"), a.get("until")
        if not _is_int(ev_w) or not _is_int(until):
            raise Reject("bad_args", "ev_w and until must be integers")
        if not now < until <= now + _MAX_DISPATCH_S:
            raise Reject("bad_args", "until must be in the next 4 h")
        lim = self.cfg["limits"]
        if abs(ev_w) > 10 * max(lim["charge_w"], lim["discharge_w"]):
            raise Reject("bad_args", "ev_w out of range")
        notes = []
        cmd_w = ev_w
        if ev_w > lim["charge_w"]:
            cmd_w = lim["charge_w"]
            notes.append("limited to limits.charge_w %d W" % cmd_w)
        elif -ev_w > lim["discharge_w"]:
            cmd_w = -lim["discharge_w"]
            notes.append("limited to limits.discharge_w %d W" % -cmd_w)
        soc = self.shared.status.field("soc_cpct")
        soc = None if soc is None else soc / 100
        b = self.cfg["battery"]
        reserve = self.will["reserve_pct"]
        if soc is not None and cmd_w != 0:
            # projected SoC at `until` at the commanded power
            wh = cmd_w * (until - now) / 3600
            end = soc + 100 * wh / b["capacity_wh"]
            if cmd_w < 0 and end < reserve:
                notes.append("limited: stops at reserve %s %%" % _pct(reserve))
            if cmd_w > 0 and end > b["soc_max_pct"]:
                notes.append("limited: stops at soc_max %s %%" % _pct(b["soc_max_pct"]))
        detail = "dispatch %+d W until %d" % (cmd_w, until)
        if notes:
            detail += "; " + "; ".join(notes)
        return ("dispatch", cmd_w, until), detail, {"dispatch": [cmd_w, until]}

    def _op_set_reserve(self, a, now):
        _only(a, ("pct",))
        pct = a.get("pct")
        b = self.cfg["battery"]
        if not _is_num(pct):
            raise Reject("bad_args", "pct must be a number")
        dep = self.will["departure"][1]
        if not b["soc_min_pct"] <= pct <= b["soc_max_pct"] or pct > dep:
            raise Reject("bad_args", "need soc_min_pct <= pct <= soc_max_pct and pct <= departure soc")
        return ("set_reserve", pct), "reserve %s %%" % _pct(pct), {"reserve_pct": pct}

    def _op_set_departure(self, a, now):
        _only(a, ("time", "soc_pct"))
        t, soc = a.get("time"), a.get("soc_pct")
        try:
            minute = hhmm_to_min(t)
        except ValueError as e:
            raise Reject("bad_args", "time " + str(e))
        if not _is_num(soc) or not self.will["reserve_pct"] <= soc <= 100:
            raise Reject("bad_args", "need reserve_pct <= soc_pct <= 100")
        return (("set_departure", minute, soc), "departure %s at %s %%" % (min_to_hhmm(minute), _pct(soc)),
                {"departure": [minute, soc]})

    def _op_set_mode(self, a, now):
        _only(a, ("mode",))
        mode = a.get("mode")
        if mode not in MODES:
            raise Reject("bad_args", "mode must be auto, idle or charge_now")
        return ("set_mode", mode), "mode " + mode, {"mode": mode}

    def _op_clear_fault(self, a, now):
        _only(a, ())
        latched = self.shared.status.field("latched")
        if latched is None:
            return ("clear_fault",), "no latched fault", None
        return ("clear_fault",), "clear requested: " + latched, None


# --- one pass over a JSON text before json.loads

_DEEP = "nested deeper than %d" % _MAX_DEPTH
_MANY = "has more than %d keys" % _MAX_KEYS
_DUPLICATE = "has a key twice in one object"
# the keys seen (a 25-bit hash: h * 31 stays a small int and the offset of the opening quote), as a
# stack: each open object's keys from _base[depth] on. Allocated once.
_hash = array("i", range(_MAX_KEYS))
_pos = array("H", range(_MAX_KEYS))
_base = array("B", range(_MAX_DEPTH + 1))


def _scan(text, stop_at_duplicate=True):
    """-> None, or why `text` (bytes) is refused: bracket depth outside
    strings beyond _MAX_DEPTH (json.loads would build one list or dict per
    level), more than _MAX_KEYS keys, or a key twice in one object (json
    would keep the last silently). Escaped keys compare as decoded ("p\\u0063t"
    is "pct"). A duplicate is reported after the whole text is checked
    for the other two unless stop_at_duplicate. Allocates nothing unless a
    key has an escape or two hashes meet."""
    depth = 0
    objs = 0  # bit d: the container at depth d is an object
    nkeys = 0
    want_key = False  # the next string is a key
    in_str = key = esc = escaped = False
    h = start = 0
    dup = None
    if isinstance(text, str):
        text = text.encode()
    i = -1
    for c in text:
        i += 1
        if in_str:
            if esc:
                esc = False
                h = (h * 31 + c) & 0x1FFFFFF
            elif c == 0x5C:  # backslash
                esc = escaped = True
            elif c == 0x22:  # quote
                in_str = False
                if key:
                    if escaped:
                        h = _hash_decoded(text, start, i)
                    for j in range(_base[depth], nkeys):
                        if _hash[j] == h and _same_key(text, _pos[j], start):
                            if stop_at_duplicate:
                                return _DUPLICATE
                            dup = _DUPLICATE
                            break
                    if nkeys == _MAX_KEYS:
                        return _MANY
                    _hash[nkeys] = h
                    _pos[nkeys] = start
                    nkeys += 1
            elif key:
                h = (h * 31 + c) & 0x1FFFFFF
        elif c == 0x22:
            in_str = True
            key = want_key
            want_key = False
            if key:
                h = 0
                start = i
                escaped = False
        elif c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > _MAX_DEPTH:
                return _DEEP
            if depth > 0:
                if c == 0x7B:
                    objs |= 1 << depth
                    _base[depth] = nkeys
                else:
                    objs &= ~(1 << depth)
            want_key = c == 0x7B and depth > 0
        elif c == 0x5D or c == 0x7D:
            depth -= 1
            want_key = False
        elif c == 0x2C:  # ,
            want_key = depth > 0 and objs >> depth & 1
    return dup


def _str_end(text, i):
    """The index of the quote closing the string whose opening quote is at i."""
    i += 1
    while text[i] != 0x22:
        i += 2 if text[i] == 0x5C else 1
    return i


def _decoded(text, start):
    try:
        return json.loads(text[start:_str_end(text, start) + 1])
    except ValueError:
        return None


def _hash_decoded(text, start, end):
    s = _decoded(text, start)
    h = 0
    for c in (b"" if s is None else s.encode()):
        h = (h * 31 + c) & 0x1FFFFFF
    return h


def _same_key(text, a, b):
    return _decoded(text, a) == _decoded(text, b)


def _only(args, names):
    for k in args:
        if k not in names:
            raise Reject("bad_args", "unknown argument " + str(k)[:32])


def _pct(v):
    return ("%.1f" % v).rstrip("0").rstrip(".")
