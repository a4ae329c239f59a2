# The state directory of one device, chosen and claimed once at boot
# (v2g.store.open_store; v2g.config checks it can be written).
#
# A store holds one device's state: its outbox (telemetry under its
# device_id), its command seq and its run-time settings. owner.json records
# which device_id that is, so a board re-deployed with another device_id
# neither sends the old outbox under the new id nor keeps the old seq and
# settings.
import json
import os

from v2g.store import JsonFile, ensure_dir, read_bytes

OWNER = "owner.json"
# Every file of a device's state (outbox.py, commands.py, app.py), each
# also with its ".tmp" sibling. A new state file must be listed here, or a
# store taken over by another device_id would hand it on.
STATE_FILES = ("outbox.jsonl", "outbox.meta", "cmd_seq.json", "settings.json")


def store_dir(cfg, board):
    """store.dir, else the board's store_dir; on the unix port one directory
    per device_id under it, since one host runs many site configs (make run,
    the tests, the simulator) while a board is one device with one store."""
    d = cfg["store"]["dir"]
    if d:
        return d
    d = board.get("store_dir") or "data"
    if board.get("chip") == "unix":
        d = d.rstrip("/") + "/" + cfg["device_id"]
    return d


def probe(path):
    """Make `path` and write and remove a file in it; OSError if it cannot
    be (read-only, a file in the way, no space)."""
    ensure_dir(path)
    p = path + "/.probe"
    with open(p, "wb") as f:
        f.write(b"ok")
    os.remove(p)


def open_store(cfg, board):
    """-> the state directory for cfg's device_id, made and claimed, before
    anything in it is read. A store without owner.json (first use, or
    written before owners were recorded) is taken over as it is; one whose
    owner.json names another device_id (or cannot be read) is emptied of
    that device's state first, with a `store_reset` event."""
    d = store_dir(cfg, board)
    cfg["store"]["dir"] = d
    ensure_dir(d)
    me = cfg["device_id"]
    path = d + "/" + OWNER
    raw = read_bytes(path)
    if raw is not None:
        try:
            owner = json.loads(raw).get("device_id")
        except (ValueError, AttributeError):
            owner = None  # not ours provably: reset
        if owner == me:
            return d
        _reset(d, owner, me)
    JsonFile(path, {}).save({"device_id": me})
    return d


def _reset(d, old, new):
    # The state files go before owner.json changes: a power cut in between
    # finds the old owner again and resets again.
    removed = []
    outbox_bytes = 0
    for name in STATE_FILES:
        for p in (d + "/" + name, d + "/" + name + ".tmp"):
            try:
                size = os.stat(p)[6]
            except OSError:
                continue
            if p.endswith("/outbox.jsonl"):  # not its compaction copy
                outbox_bytes = size
            os.remove(p)
            removed.append(p[len(d) + 1:])
    from v2g import log

    log.event("store_reset", {"dir": d, "old_device_id": old, "device_id": new, "removed": removed,
                              "outbox_bytes": outbox_bytes})
