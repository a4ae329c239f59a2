# Technician helpers at the serial REPL:  import tech; tech.status()
#
# On a board, Ctrl-C at the console stops only the cloud link; the control
# loop keeps protecting the battery in its thread, and these helpers look
# at it and talk to it through its shared port (v2g.shared), as the cloud
# link does: they read the status record it publishes every tick and post
# actions into its inbox. Everything that touches the inverter or the
# settings goes through the control loop (it owns the Modbus line and its
# state); the helpers only post requests and wait for the answer. Nothing here prints a secret: the config is shown
# through config.redacted() and keys are never read.
import gc
import time

_WAIT_MS = const(3000)


def _app():
    from v2g import app

    if app.current is None:
        raise RuntimeError("the firmware is not running (main.py starts it)")
    return app.current


def _local(unix_s):
    from v2g import app

    off = app.current.cfg["utc_offset_min"] if app.current else 0
    t = time.gmtime(unix_s + off * 60 - _epoch_offset())
    return "%04d-%02d-%02d %02d:%02d:%02d" % t[:6]


def _epoch_offset():
    # gmtime() takes seconds since the port's epoch (2000 on some boards)
    return 946684800 if time.gmtime(0)[0] == 2000 else 0


def _w(v):
    return "-" if v is None else "%+d W" % v


def _pct(v):
    return "-" if v is None else "%.1f %%" % v


def _ask(action, *args):
    """Run an action in the control thread; -> its result (or raise).
    The control loop's inbox never drops an action: while it is full
    (a flood of cloud commands) this waits for room, within the 3 s."""
    a = _app()
    box = []
    t0 = time.ticks_ms()
    while not a.shared.post((action,) + args + (box,)):
        if time.ticks_diff(time.ticks_ms(), t0) > _WAIT_MS:
            raise RuntimeError("the control loop's inbox stayed full for 3 s")
        time.sleep_ms(10)
    while not box:
        if time.ticks_diff(time.ticks_ms(), t0) > _WAIT_MS:
            raise RuntimeError("the control loop did not answer within 3 s")
        time.sleep_ms(10)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def status():
    """One screen: mode, reason, SoC, power, limits, links, last faults."""
    from v2g.shared import state_of

    a = _app()
    cl = a.cloud
    r = a.shared.read()  # one tick's values
    s = state_of(r)
    cfg = a.cfg
    b, lim = cfg["battery"], cfg["limits"]
    dep_min, dep_pct = r["dep_min"], r["dep_cpct"] / 100
    d = r["dispatch"]
    lines = [
        "%s  %s   board %s" % (cfg["device_id"], _local(s["ts"]), cfg["board"]),
        "mode      %-10s reason %s%s" % (s["mode"], s["reason"], "   FAULT " + s["fault"] if s["fault"] else ""),
        "battery   SoC %s   reserve %s   min %s   max %s" % (
            _pct(s["soc_pct"]), _pct(s["reserve_pct"]), _pct(b["soc_min_pct"]), _pct(b["soc_max_pct"])),
        "departure %02d:%02d at %s" % (dep_min // 60, dep_min % 60, _pct(dep_pct)),
        "power     ev_w %s   setpoint %s   request %s   window %s..%s" % (
            _w(s["ev_w"]), _w(s["setpoint_w"]), _w(r["req_w"]), _w(r["lo_w"]), _w(r["hi_w"])),
        "limits    charge %d W  discharge %d W  ramp %d W/s   mode %s%s" % (
            lim["charge_w"], lim["discharge_w"], lim["ramp_w_per_s"], r["user_mode"],
            "   dispatch %+d W until %s" % (d[0], _local(d[1])) if d else ""),
        "grid      %s Hz" % ("-" if s["grid_hz"] is None else "%.3f" % s["grid_hz"]),
        "energy    in %s Wh   out %s Wh (inverter lifetime counters)" % (s["wh_in"], s["wh_out"]),
        "inverter  %s   %s   errors %d%s" % (
            "ok" if r["link_ok"] else "LOST", cfg["inverter"]["link"], r["link_errors"],
            "   last: " + r["last_link_error"] if r["last_link_error"] else ""),
        "cloud     %s   %s:%d%s   outbox %d pending, %d dropped%s" % (
            "connected" if cl.connected else "offline", cl.host, cl.port, " TLS" if cl.tls else "",
            a.outbox.pending, a.outbox.dropped, "   last: " + cl.last_error if cl.last_error else ""),
    ]
    if r["vehicle"] is not None:
        soc = r["v_soc_cpct"]
        lines.append("vehicle   %s %s   SoC %s   limits +%d/-%d W%s" % (
            cfg["vehicle"]["driver"], r["vehicle"], _pct(None if soc is None else soc / 100),
            r["v_charge_limit_w"], r["v_discharge_limit_w"], "   fault " + r["v_fault"] if r["v_fault"] else ""))
    st = a.shared.status.tick_stats()
    lines.append("loop      %d ticks of %d ms, %d overruns, %d internal errors%s   heap free %d" % (
        r["tick_no"], cfg["control"]["period_ms"], r["overruns"], r["internal_errors"],
        "" if st is None else ", tick delay p99 %.2f ms" % st[1], gc.mem_free()))
    recent = r["fault_log"][-3:]
    lines.append("faults    " + ("none" if not recent else "; ".join(
        "%s %s %s" % (_local(t), what, code) for t, what, code in recent)))
    print("\n".join(lines))


def faults():
    """The fault history (raised and cleared), oldest first, local time."""
    log = _app().shared.status.field("fault_log")
    if not log:
        print("no faults recorded since start")
    for t, what, code in log:
        print("%s  %-7s %s" % (_local(t), what, code))


def read(point):
    """A SunSpec point by name with its unit, e.g. read("701.W")."""
    from v2g.sunspec_points import read_point

    value, units = _ask("read_point", read_point, point)
    print("%s = %s %s" % (point, "not implemented" if value is None else value, units))
    return value


def pause():
    """Hold at 0 W (protection and reporting go on) until resume()."""
    _ask("pause")
    print("paused: holding at 0 W; tech.resume() to continue")


def resume():
    _ask("resume")
    print("resumed")


def clear_fault():
    """Clear a latched inverter fault (once the inverter no longer reports it)."""
    a = _app()
    latched = a.shared.status.field("latched")
    _ask("clear_fault")
    _next_ticks(a, 2)
    still = a.shared.status.field("latched")
    if latched is None:
        print("no latched fault")
    elif still is None:
        print("cleared: " + latched)
    else:
        print("still reported by the inverter: " + still)


def selftest():
    """Links, config, clock, storage, heap: PASS/FAIL each; returns True if all pass."""
    a = _app()
    results = []

    def check(name, ok, detail):
        results.append(ok)
        print("%-8s %s  %s" % (name, "PASS" if ok else "FAIL", detail))

    r = a.shared.read()
    check("inverter", r["link_ok"] and r["inv_ready"],
          "models %s" % list(r["inv_models"]) if r["link_ok"] else "link lost: %s" % r["last_link_error"])
    if a.cloud.connected:
        check("cloud", True, "connected to %s:%d" % (a.cloud.host, a.cloud.port))
    else:
        # at the REPL the cloud link is stopped: try the broker directly
        try:
            ms = _cloud_probe(a)
            check("cloud", True, "broker %s:%d answers (CONNACK in %d ms); link stopped at the REPL, tech.cloud() "
                  "runs it" % (a.cloud.host, a.cloud.port, ms))
        except Exception as e:  # noqa: BLE001 - any failure is the finding
            check("cloud", False, "%s:%d: %s: %s" % (a.cloud.host, a.cloud.port, type(e).__name__, e))
    if r["vehicle"] is not None:
        check("vehicle", r["v_fault"] is None, "%s %s" % (a.cfg["vehicle"]["driver"], r["vehicle"])
              if r["v_fault"] is None else r["v_fault"])
    try:
        from v2g import config

        config.load(a.config_path)
        check("config", True, a.config_path + " valid")
    except Exception as e:  # noqa: BLE001 - report whatever is wrong
        check("config", False, str(e))
    finally:
        _unload("v2g.config")
    now = a.clock.time()
    ticking = _next_ticks(a, 1)
    wall_ok = a.clock.trusted()  # the rule the control loop and commands use
    ts = a.cloud.timesync
    check("clock", wall_ok and ticking, "wall %s%s" % (
        _local(now) if wall_ok else "not set (%d; SNTP %s: %s)" % (
            now, a.cfg["ntp"]["server"], ts.last_error if ts and ts.last_error else "no answer yet"),
        ", control ticking" if ticking else ", control loop NOT ticking (3 s)"))
    path = a.cfg["store"]["dir"] + "/selftest.tmp"
    try:
        from v2g.store import atomic_write, read_bytes, remove

        atomic_write(path, b"selftest")
        ok = read_bytes(path) == b"selftest"
        remove(path)
        import os

        st = os.statvfs(a.cfg["store"]["dir"])
        free_kb = st[0] * st[3] // 1024
        check("storage", ok and free_kb > 64, "%s writable, %d KB free" % (a.cfg["store"]["dir"], free_kb))
    except OSError as e:
        check("storage", False, str(e))
    gc.collect()
    free = gc.mem_free()
    check("heap", free > 16384, "%d bytes free" % free)
    return all(results)


def _next_ticks(a, n):
    """Wait (at most 3 s) until the control loop has ticked n more times;
    -> True if it did."""
    t0 = a.shared.status.field("tick_no")
    w0 = time.ticks_ms()
    while a.shared.status.field("tick_no") < t0 + n:
        if time.ticks_diff(time.ticks_ms(), w0) >= _WAIT_MS:
            return False
        time.sleep_ms(a.cfg["control"]["period_ms"])
    return True


def _cloud_probe(a):
    from v2g.mqtt import Client, open_stream

    m = a.cfg["mqtt"]
    t0 = time.ticks_ms()
    c = Client(m["client_id"][:17] + "-probe", a.cloud.host, a.cloud.port, m["user"], m["password"], 30)
    c.open(open_stream(a.cloud.host, a.cloud.port, 5, a.cloud.stream_context()))
    ms = time.ticks_diff(time.ticks_ms(), t0)
    c.disconnect()
    return ms


def cloud():
    """Run the cloud link again in the foreground (Ctrl-C returns here)."""
    a = _app()
    try:
        a.cloud.run()
    except KeyboardInterrupt:
        pass
    a.cloud.stop()
    print("cloud link stopped")


def config(key=None, value=None):
    """config(): show it (secrets hidden). config("battery.reserve_pct", 35):
    change one key; the whole file is validated first, then saved
    atomically (the old one kept as .bak). Takes effect at restart()."""
    import json

    from v2g.store import atomic_write, read_bytes

    a = _app()
    try:
        from v2g import config as cfgmod

        raw = json.loads(read_bytes(a.config_path))
        if key is None:
            print(json.dumps(cfgmod.redacted(raw)))
            return
        d = raw
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = value
        try:
            cfgmod.validate(json.loads(json.dumps(raw)))
        except cfgmod.ConfigError as e:
            print("not saved: %s: %s" % (e.path, e.rule))
            return False
        atomic_write(a.config_path + ".bak", read_bytes(a.config_path))
        atomic_write(a.config_path, json.dumps(raw).encode())
        print("saved %s; takes effect at tech.restart()" % key)
        return True
    finally:
        _unload("v2g.config")


def factory_reset():
    """Forget every change made at run time (remote reserve, departure,
    mode, dispatch; a pause). Keeps the site config, the command seq (so no
    old command can be replayed), the telemetry seq and outbox, and the
    energy totals (the inverter's own counters). Takes effect at restart();
    until then cloud commands are checked against both the settings of the
    moment and the site config's (v2g.commands: Commands.forget)."""
    a = _app()
    a.commands.forget()
    _ask("resume")
    print("run-time settings cleared; command and telemetry seq kept; tech.restart() to start clean")


def restart():
    """Stop power cleanly and restart the firmware."""
    from v2g.board import reset

    a = _app()
    a.stop_control()
    reset()


def _unload(name):
    import v2g

    v2g.unload(name)
    gc.collect()
