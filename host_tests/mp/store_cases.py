# test_store.py's MicroPython half: v2g.storedir and v2g.store.open_store
# (host_tests/mp/cases.py).
import json
import os
import sys

import cases
from v2g import store, storedir

unix = json.loads(open("board_configs/unix_sim.json").read())
esp32 = json.loads(open("board_configs/esp32_devkitc.json").read())


def cfg(dev, d=None):
    return {"device_id": dev, "store": {"dir": d}}


def default_dirs():
    return [storedir.store_dir(cfg("site-a"), unix), storedir.store_dir(cfg("site-b"), unix),
            storedir.store_dir(cfg("site-a"), esp32), storedir.store_dir(cfg("site-b"), esp32),
            storedir.store_dir(cfg("site-a", "/tmp/x"), unix)]


def other_device(d):
    # the files in D after each open_store: site-a, site-a again, site-b
    # (and its owner record), site-b again
    def files():
        return sorted(os.listdir(d))

    def put(name, text):
        with open(d + "/" + name, "w") as f:
            f.write(text)

    out = []
    store.open_store(cfg("site-a", d), esp32)             # first use: claimed by site-a
    for name in storedir.STATE_FILES:
        put(name, "of site-a")
    put("outbox.jsonl.tmp", "x")
    put("notes.txt", "not state")                          # not ours to remove
    out.append(files())
    store.open_store(cfg("site-a", d), esp32)             # the same device again: all kept
    out.append(files())
    store.open_store(cfg("site-b", d), esp32)             # re-deployed as site-b
    out.append(files())
    out.append(json.loads(open(d + "/owner.json").read()))
    put("settings.json", "of site-b")
    store.open_store(cfg("site-b", d), esp32)
    out.append(files())
    return out


def no_owner(d):
    # [files after adopting a store without owner, files after a bad owner file]
    storedir.ensure_dir(d)
    with open(d + "/settings.json", "w") as f:
        f.write("{}")
    store.open_store(cfg("site-a", d), esp32)             # written before owners were recorded
    kept = sorted(os.listdir(d))
    assert "v2g.storedir" not in sys.modules               # boot-only code, unloaded
    with open(d + "/owner.json", "w") as f:
        f.write("[1")                                      # not an owner record
    store.open_store(cfg("site-a", d), esp32)
    return [kept, sorted(os.listdir(d))]


cases.main(globals())
