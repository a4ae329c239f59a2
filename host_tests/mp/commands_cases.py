# test_commands.py's MicroPython half: v2g.commands.Commands against a real
# Controller whose inverter link is down (host_tests/mp/cases.py). Each case
# takes STORE (a directory, with settings.json in it if the test saved some)
# and PAYLOADS (a JSON file: the signed commands as text, in order).
import json

import cases
from dead_inverter import DeadInverter
from v2g import config, log
from v2g import store as v2g_store
from v2g.clock import Clock
from v2g.commands import Commands
from v2g.control import Controller
from v2g.store import JsonFile

log.quiet = True


def _setup(store, payloads_path):
    # the controller is started from the saved settings, as at boot, so the
    # commands are checked against what a restarted board would hold
    cfg = config.load("examples/site.json")
    cfg["store"]["dir"] = store
    v2g_store.ensure_dir(store)
    ctrl = Controller(cfg, Clock(), DeadInverter())
    ctrl.apply_settings(JsonFile(store + "/settings.json", {}).load())
    cmds = Commands(cfg, Clock(), store, ctrl.shared)
    with open(payloads_path) as f:
        payloads = json.loads(f.read())
    return cfg, ctrl, cmds, payloads


def _results(cmds, payloads):
    return [cmds.handle(p.encode()) for p in payloads]


def flood(store, payloads_path):
    _, ctrl, cmds, payloads = _setup(store, payloads_path)
    res = _results(cmds, payloads)
    ctrl.tick()
    again = cmds.handle(payloads[16].encode())  # the first one refused, as it was sent
    ctrl.tick()
    return {"res": res, "again": again, "applied": ctrl.actions_applied, "dropped": ctrl.shared.inbox.dropped,
            "dispatch": ctrl.dispatch and ctrl.dispatch[0], "reserve": ctrl.settings.reserve_pct,
            "settings": JsonFile(store + "/settings.json", {}).load(), "seq": cmds.last_seq}


def reserved_slot(store, payloads_path):
    _, ctrl, cmds, payloads = _setup(store, payloads_path)
    save = cmds.seq_file.save
    others = []

    # stands in for another thread filling the inbox in the window between
    # the command taking its slot and its seq reaching flash
    def save_while_others_post(doc):
        for _ in range(20):
            if not ctrl.shared.post(("pause",)):
                break
            others.append(1)
        save(doc)

    cmds.seq_file.save = save_while_others_post
    res = _results(cmds, payloads)
    full = ctrl.shared.post(("resume",))
    ctrl.tick()
    return {"res": res, "others": len(others), "full": full, "applied": ctrl.actions_applied,
            "dropped": ctrl.shared.inbox.dropped, "mode": ctrl.settings.mode}


def technician_helpers(store, payloads_path):
    import _thread
    import os
    import time

    from v2g import app, tech

    cfg, ctrl, cmds, payloads = _setup(store, payloads_path)

    class App:
        pass

    # tech finds the running firmware through app.current
    a = App()
    a.shared, a.commands, a.cfg = ctrl.shared, cmds, cfg
    app.current = a
    for i in range(16):
        assert ctrl.shared.post(("pause",))
    done = []

    # starts late so that tech.resume() meets a full inbox and has to wait
    def control_thread():
        time.sleep_ms(300)
        for _ in range(50):
            ctrl.tick()
            time.sleep_ms(20)
        done.append(1)

    _thread.start_new_thread(control_thread, ())
    tech.resume()  # waits for room in the full inbox, then for the answer
    tech.factory_reset()
    gone = "settings.json" not in os.listdir(store)
    res = _results(cmds, payloads)
    while not done:
        time.sleep_ms(20)
    return {"applied": ctrl.actions_applied, "dropped": ctrl.shared.inbox.dropped, "gone": gone, "res": res}


def settings_as_they_will_be(store, payloads_path):
    _, ctrl, cmds, payloads = _setup(store, payloads_path)
    ctrl.guard.soc_cpct = 4600  # 46 %: an hour at -7 kW ends near 34 %
    ctrl._publish()  # the commands judge a dispatch by the published SoC
    res = _results(cmds, payloads)
    return {"res": res, "loop_reserve": ctrl.settings.reserve_pct, "will": getattr(cmds, "will", None)}


def saved_settings(store, payloads_path):
    _, _, cmds, payloads = _setup(store, payloads_path)
    return _results(cmds, payloads)


def hostile_bodies(store, payloads_path):
    import gc

    from v2g import commands

    _, _, cmds, payloads = _setup(store, payloads_path)
    res = _results(cmds, payloads)
    # the scan allocates nothing for a body without escapes (payload 14 has none)
    text = json.loads(payloads[14])["body"].encode()
    scan = getattr(commands, "_scan", lambda t: "no scanner")
    gc.collect()
    gc.disable()
    m0 = gc.mem_alloc()
    why = scan(text)
    m1 = gc.mem_alloc()
    gc.enable()
    return {"res": res, "scan": why, "alloc": m1 - m0, "len": len(text), "seq": cmds.last_seq}


cases.main(globals())
