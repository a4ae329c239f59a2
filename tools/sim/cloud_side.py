"""The cloud side of `make sim`: a paho-mqtt client that watches the
device's topics and sends signed dispatches at the evening peak, on the
simulated clock, then says what it saw."""
import json
import threading
import time

from tools.cloud_client import Cloud, command

# (local time, ev_w, minutes): an aggregator asks for export at the peak; the
# second asks for more than the site allows and longer than the reserve can
# hold, so the firmware accepts it limited
DEFAULT_DISPATCHES = [("18:00", -5000, 60), ("19:15", -9000, 150)]


class CloudSide:
    def __init__(self, clock, host, port, device_id, key_hex, start_s, dispatches=DEFAULT_DISPATCHES):
        self.clock = clock
        self.key = key_hex
        self.cloud = Cloud(host, port, device_id)
        self.plan = []
        for hhmm, ev_w, minutes in dispatches:
            hh, mm = (int(x) for x in hhmm.split(":"))
            at = start_s + hh * 3600 + mm * 60
            self.plan.append({"at": at, "ev_w": ev_w, "until": at + minutes * 60, "id": f"peak-{hhmm}"})
        self.sent = []
        self.seq = 1
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        pending = list(self.plan)
        while not self.stop_flag.is_set() and pending:
            now = self.clock.now()
            if now >= pending[0]["at"]:
                d = pending.pop(0)
                payload = command(self.key, "dispatch", {"ev_w": d["ev_w"], "until": d["until"]}, self.seq,
                                  int(now) + 600, d["id"])
                self.seq += 1
                self.cloud.send(payload)
                self.sent.append(d)
            time.sleep(0.01)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(5)
        time.sleep(0.3)  # last results in flight
        self.cloud.close()

    def summary(self):
        results = {r.get("id"): r for r in self.cloud.json("cmd/result")}
        out = []
        for d in self.sent:
            r = results.get(d["id"])
            out.append({"id": d["id"], "ev_w": d["ev_w"], "at_s": d["at"], "until_s": d["until"],
                        "ok": bool(r and r["ok"]), "limited": bool(r and r["ok"] and "limited" in (r["detail"] or "")),
                        "detail": r["detail"] if r else "no result"})
        states = self.cloud.json("state")
        return {
            "dispatches": out,
            "dispatches_sent": len(out),
            "dispatches_honoured": sum(1 for d in out if d["ok"]),
            "dispatches_limited": sum(1 for d in out if d["limited"]),
            "seen": {t: len(self.cloud.topic(t)) for t in ("status", "state", "telemetry", "event", "cmd/result")},
            "dispatch_states": sum(1 for s in states if s.get("reason") == "dispatch"),
            "telemetry_seq_last": max((r["seq"] for r in self.cloud.json("telemetry")), default=None),
        }

    @staticmethod
    def text(s):
        lines = ["cloud side saw: " + ", ".join(f"{k} {v}" for k, v in s["seen"].items())]
        for d in s["dispatches"]:
            lines.append(f"  dispatch {d['id']}: {d['ev_w']:+d} W -> {'accepted' if d['ok'] else 'REJECTED'}"
                         f"{' (limited)' if d['limited'] else ''}: {d['detail']}")
        return "\n".join(lines)


def dump(path, summary):
    path.write_text(json.dumps(summary, indent=2))
