# Event log: one JSON object per line on the console.
#
# The serial console is where a technician looks first, and the simulator
# and tests read the same lines, so each line is both readable and parseable:
#   {"t": 1767225600, "ev": "mode", "mode": "charge", "reason": "departure_charge"}
# Secrets never reach this module: callers pass only the fields they chose.
import json
import sys

import _thread

_clock = None
quiet = False


def set_clock(clock):
    global _clock
    _clock = clock


# two threads log: a line goes out in two writes (its text, then the
# newline) under this lock, so no line is ever joined to its newline in a
# third, longer string
_lock = _thread.allocate_lock()


def _emit(line):
    with _lock:
        sys.stdout.write(line)
        sys.stdout.write("\n")


def event(kind, fields=None):
    if quiet:
        return
    rec = {"t": _clock.time() if _clock else 0, "ev": kind}
    if fields:
        rec.update(fields)
    _emit(json.dumps(rec))


def record(kind, fields, ts):
    """Log an event; -> its record for the `event` topic, JSON text (the
    console line, with "ts" too): encoded once, and what the cloud link
    queues is that text, a third of the heap of a dict with its values.
    fields becomes the record: pass a dict made for it (with room: a
    state_of() dict has it), not one that is kept."""
    fields["ev"] = kind
    fields["ts"] = ts
    fields["t"] = _clock.time() if _clock else 0
    line = json.dumps(fields)
    if not quiet:
        _emit(line)
    return line


def error(text):
    sys.stderr.write(text)
    sys.stderr.write("\n")
