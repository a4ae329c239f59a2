# Event log: one JSON object per line on the console.
#
# The serial console is where a technician looks first, and the simulator
# and tests read the same lines, so each line is both readable and parseable:
#   {"t": 1767225600, "ev": "mode", "mode": "charge", "reason": "departure_charge"}
# Secrets never reach this module: callers pass only the fields they chose.
import json
import sys

_clock = None
quiet = False


def set_clock(clock):
    global _clock
    _clock = clock


def event(kind, fields=None):
    if quiet:
        return
    rec = {"t": _clock.time() if _clock else 0, "ev": kind}
    if fields:
        rec.update(fields)
    # one write per line: two threads log, and a single write of a short
    # line is not interleaved with another
    sys.stdout.write(json.dumps(rec) + "\n")


def record(kind, fields, ts):
    """Log an event and return it as the record for the `event` topic."""
    event(kind, fields)
    rec = dict(fields)
    rec["ev"] = kind
    rec["ts"] = ts
    return rec


def error(text):
    sys.stderr.write(text)
    sys.stderr.write("\n")
