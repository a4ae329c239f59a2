# Signed remote commands (CONTRACT section 4): verify, check, persist, hand
# over to the control loop. Runs in the cloud thread.
#
# Order of checks: size -> JSON envelope -> signature -> body fields ->
# replay (seq) -> op -> clock set / expiry -> args. A rejected command changes nothing;
# an accepted one first persists the new seq (and the setting it changes),
# then is queued for the control loop, which applies it at its next tick.
import json

from v2g import auth
from v2g.clock import hhmm_to_min, min_to_hhmm
from v2g.store import JsonFile

_MAX_PAYLOAD = const(4096)
_MAX_DEPTH = const(8)  # a command is 3 levels deep; 4 KB of "[" would be 4,096 lists
_MAX_ID = const(36)
_MAX_DISPATCH_S = const(4 * 3600)
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
    def __init__(self, cfg, clock, store_dir, ctrl):
        self.cfg = cfg
        self.clock = clock
        self.ctrl = ctrl
        self.key = auth.key_from_hex(cfg["command_key"])
        self.seq_file = JsonFile(store_dir + "/cmd_seq.json", {"seq": -1})
        self.last_seq = self.seq_file.load()["seq"]
        self.settings = JsonFile(store_dir + "/settings.json", {})
        self.posted = 0  # the control loop's number of the last action posted

    def handle(self, payload):
        """payload: bytes or None (None: too large, already discarded).
        Returns the cmd/result dict."""
        cid = None
        try:
            body, cid = self._parse(payload)
            res = self._execute(body)
            return {"id": cid, "ok": True, "error": None, "detail": res}
        except Reject as r:
            return {"id": cid if isinstance(cid, str) and len(cid) <= _MAX_ID else None,
                    "ok": False, "error": r.code, "detail": r.detail}

    # --- envelope and body

    def _parse(self, payload):
        if payload is None or len(payload) > _MAX_PAYLOAD:
            raise Reject("bad_payload", "payload larger than %d bytes" % _MAX_PAYLOAD)
        if _too_deep(payload):
            raise Reject("bad_payload", "nested deeper than %d" % _MAX_DEPTH)
        try:
            outer = json.loads(payload)
        except (ValueError, MemoryError, RuntimeError):
            raise Reject("bad_payload", "not JSON")
        if not isinstance(outer, dict) or not isinstance(outer.get("body"), str) or not isinstance(outer.get("sig"), str):
            raise Reject("bad_payload", 'need {"body": "<JSON text>", "sig": "<hex>"}')
        body_text = outer["body"]
        if _too_deep(body_text):
            raise Reject("bad_payload", "body nested deeper than %d" % _MAX_DEPTH)
        try:
            body = json.loads(body_text)
        except (ValueError, MemoryError, RuntimeError):
            raise Reject("bad_payload", "body is not JSON")
        cid = body.get("id") if isinstance(body, dict) else None
        if not auth.verify(self.key, body_text.encode(), outer["sig"]):
            raise Reject("bad_sig", "signature does not match the body")
        if not isinstance(body, dict):
            raise Reject("bad_payload", "body must be an object")
        for name, check in (("id", lambda v: isinstance(v, str) and 0 < len(v) <= _MAX_ID),
                            ("seq", _is_int), ("exp", _is_int), ("op", lambda v: isinstance(v, str)),
                            ("args", lambda v: isinstance(v, dict))):
            if name not in body or not check(body[name]):
                raise Reject("bad_payload", "field %s missing or of the wrong type" % name)
        return body, cid

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
        # persist before acting: a seq that was acted on is never accepted again
        self.last_seq = body["seq"]
        self.seq_file.save({"seq": self.last_seq})
        if setting:
            s = self.settings.load()
            s.update(setting)
            self.settings.save(s)
        self.posted = self.ctrl.post(action)
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
        soc = self.ctrl.soc_pct()
        b = self.cfg["battery"]
        reserve = self.ctrl.reserve_pct()
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
        dep = self.ctrl.departure()[1]
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
        if not _is_num(soc) or not self.ctrl.reserve_pct() <= soc <= 100:
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
        if self.ctrl.guard.latched is None:
            return ("clear_fault",), "no latched fault", None
        return ("clear_fault",), "clear requested: " + self.ctrl.guard.latched, None


def _too_deep(text):
    """Bracket depth outside strings beyond _MAX_DEPTH? Checked before
    json.loads, which would build one list or dict per level."""
    if isinstance(text, str):
        text = text.encode()
    depth = 0
    in_str = False
    esc = False
    for c in text:
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:  # backslash
                esc = True
            elif c == 0x22:  # quote
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c == 0x5B or c == 0x7B:  # [ {
            depth += 1
            if depth > _MAX_DEPTH:
                return True
        elif c == 0x5D or c == 0x7D:
            depth -= 1
    return False


def _only(args, names):
    for k in args:
        if k not in names:
            raise Reject("bad_args", "unknown argument " + str(k)[:32])


def _pct(v):
    return ("%.1f" % v).rstrip("0").rstrip(".")
