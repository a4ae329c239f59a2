# Start-up: config first (an invalid config never starts the power stage),
# then the hardware, then two threads: the control loop (the second core on
# an RP2040) and the cloud link (this thread).
#
# Ctrl-C at the console: on a board it stops only the cloud link and leaves
# the control loop protecting the battery, so a technician gets the REPL
# (`import tech`) while the charger stays safe; on the unix port (make run,
# SIGINT/SIGTERM) it stops everything and exits 0.
import sys
import time

import _thread

from v2g import log
from v2g import clock as clockmod

_EXIT_CONFIG = const(2)


class _BadConfig(Exception):
    pass

current = None  # the running App, for the technician helpers


def _args(argv):
    """unix port: main.py [CONFIG] [--boards DIR]; boards: /config.json."""
    path, boards = "config.json", "board_configs"
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--boards" and i + 1 < len(argv):
            boards = argv[i + 1]
            i += 1
        else:
            path = a
        i += 1
    return path, boards


def load(path, boards_dir):
    """-> (cfg, board) or exits 2 with one line naming the key and the rule."""
    from v2g import config

    try:
        cfg = config.load(path)
        board = config.load_board(boards_dir, cfg["board"])
        config.check_board(cfg, board)
        config.check_here(cfg, board)
    except config.ConfigError as e:
        log.error("config error: " + e.path + ": " + e.rule)
        if sys.platform in ("esp32", "rp2"):
            # sys.exit() in main.py soft-resets a board: a reboot loop. Stay
            # at the REPL instead; the power stage was never commanded.
            raise _BadConfig()
        sys.exit(_EXIT_CONFIG)
    # The validator (schema and rules) is the largest module and is done
    # now: unload it, its RAM is worth more to TLS.
    del config
    import v2g

    v2g.unload("v2g.config")
    import gc

    gc.collect()
    # The values JSON gave us (floats and strings are heap objects) sit
    # where the parser and the validator left them, one every few blocks
    # across the region their garbage freed: the next large allocations
    # (the controller's, the cloud link's attribute tables) found no block
    # there. A copy made now fills the holes below from the heap's start,
    # and the originals free that region in one piece (a ROMFS day with TLS
    # then got through boot in 108 KB, where the cloud link's 592-byte
    # table found no block before; the day there still runs short later).
    memo = {}
    cfg = _compact(cfg, memo)
    board = _compact(board, memo)
    memo = None
    gc.collect()
    return cfg, board


def _compact(v, memo):
    """A copy of a config tree's dicts, lists, tuples, floats and strings
    (anything else is kept as it is). What the tree shares, a season's
    periods held for several months, stays shared in the copy. memo: id ->
    copy."""
    k = id(v)
    if k in memo:
        return memo[k]
    t = type(v)
    if t is dict:
        out = {}
        memo[k] = out
        for key in v:
            out[_compact(key, memo)] = _compact(v[key], memo)
    elif t is list:
        out = [None] * len(v)
        memo[k] = out
        for i in range(len(v)):
            out[i] = _compact(v[i], memo)
    elif t is tuple:
        out = tuple([_compact(x, memo) for x in v])
        memo[k] = out
    elif t is float:
        out = memo[k] = v * 1.0
    elif t is str:
        out = memo[k] = "%s" % v
    else:
        out = v  # ints, None, booleans, parsed links
    return out


def build(cfg, board, clock, shared=None):
    from v2g import board as boardmod
    from v2g.control import Controller
    from v2g.modbus import RtuMaster
    from v2g.sunspec import SunSpecInverter

    inv_cfg = cfg["inverter"]
    stream, baud = boardmod.inverter_stream(cfg, board)
    master = RtuMaster(stream, inv_cfg["unit"], timeout_ms=inv_cfg["timeout_ms"],
                       retries=inv_cfg["retries"], baud=baud)
    inverter = SunSpecInverter(master, inv_cfg["base_addr"], inv_cfg["revert_s"])
    return Controller(cfg, clock, inverter, build_vehicle(cfg, board), shared)


def build_vehicle(cfg, board):
    """The CHAdeMO session on the configured CAN link, or None."""
    v = cfg["vehicle"]
    if v["driver"] != "chademo":
        return None
    from v2g.chademo import ChademoSession
    from v2g.clock import Clock
    from v2g.hal.can_build import vehicle_bus

    return ChademoSession(vehicle_bus(cfg, board), Clock(), v["dc_max_voltage_v"], v["dc_max_current_a"],
                          v["dc_max_discharge_current_a"], v["dc_min_voltage_v"])


def _tls_context(tls):
    """The TLS context for the cloud link, or None (no TLS, or files the
    cloud link will report at its first connect: protection starts
    regardless)."""
    if not tls:
        return None
    from v2g.mqtt import tls_context

    try:
        return tls_context(tls)
    except (OSError, ValueError):
        return None


class App:
    def __init__(self, cfg, board, clock, config_path="config.json", shared=None, rec=None):
        """shared, rec: the threads' port and the cloud link's copy of its
        record, made by main() before the config (made here if None)."""
        from v2g.cloud import CloudLink
        from v2g.commands import Commands
        from v2g.outbox import Outbox
        from v2g.store import JsonFile, open_store

        self.cfg = cfg
        self.board = board
        self.clock = clock
        self.config_path = config_path
        tls_ctx = _tls_context(cfg["mqtt"]["tls"])  # first: its 3 KB in one piece
        store_dir = open_store(cfg, board)  # this device's, before anything in it is read
        self.ctrl = build(cfg, board, clock, shared)
        self.ctrl.apply_settings(JsonFile(store_dir + "/settings.json", {}).load())
        self.outbox = Outbox(store_dir, cfg["mqtt"]["outbox_records"])
        # the other threads get the control loop's shared port, never the loop
        self.shared = self.ctrl.shared
        self.commands = Commands(cfg, clock, store_dir, self.shared)
        self.cloud = CloudLink(cfg, clock, self.shared, self.outbox, self.commands, tls_ctx, rec)
        # SNTP: on a board at every boot (and for RTC drift), on the unix
        # port only if the OS clock is unset
        if sys.platform in ("esp32", "rp2") or not clock.trusted():
            self.cloud.ntp_at_ms = time.ticks_ms()
        self.control_started = False
        self.control_done = False

    def _control_thread(self):
        try:
            self.ctrl.run()
        finally:
            self.control_done = True

    def start_control(self):
        from v2g.board import watchdog

        self.ctrl.wdt = watchdog(self.board)
        self.control_started = True
        _thread.start_new_thread(self._control_thread, ())

    def stop_control(self):
        """Ask the control thread for a clean stop (through its inbox: 0 W,
        the car's session ended) and wait for it, at most as long as the
        config's worst transactions allow (control.stop_wait_ms). This
        thread never touches the inverter or the car: if the control thread
        does not return in time (hung), the inverter's reversion timer and
        the watchdog take the power stage to 0 W."""
        from v2g.control import stop_wait_ms

        self.ctrl.shared.request_stop()
        if not self.control_started:
            self.control_done = True
            return True
        t0 = time.ticks_ms()
        bound_ms = stop_wait_ms(self.cfg)
        while not self.control_done:
            if time.ticks_diff(time.ticks_ms(), t0) > bound_ms:
                log.error("control thread did not stop within %d ms" % bound_ms)
                return False
            time.sleep_ms(10)
        return True

    def shutdown(self):
        """A clean stop: 0 W first (it needs no network), then `offline`.
        A second Ctrl-C or SIGINT arriving meanwhile (an impatient user, a
        launcher forwarding the signal) must not skip a step: each step is
        bounded and is run again if interrupted."""
        for step in (self.stop_control, self.cloud.stop):
            for _ in range(5):
                try:
                    step()
                    break
                except KeyboardInterrupt:
                    pass


def _wifi_up(cfg):
    from v2g.board import wifi_up

    try:
        wifi_up(cfg)
    except (ImportError, OSError) as e:
        # no Wi-Fi on this port, or the radio refused: the link retries
        log.event("wifi_error", {"error": type(e).__name__ + ": " + str(e)})


def _keep_control_on_interrupt():
    if sys.platform in ("esp32", "rp2"):
        return True
    try:
        import os

        return os.getenv("V2G_REPL") == "1"
    except (ImportError, AttributeError):
        return False


def main(argv=None):
    global current
    if argv is None:
        argv = sys.argv[1:]
    path, boards = _args(argv)
    from v2g.shared import Shared, early_buffers

    early_buffers()
    # the threads' port (its rings, mailboxes and status record) and the
    # cloud link's copy of the record before anything else, while the heap
    # is whole: each record is one 750-byte table on a 64-bit port, and
    # after the validator's garbage a 100 KB heap had no hole that size
    shared = Shared()
    rec = shared.read()
    # The control loop's modules before the config (the order boot had
    # before they were split out of control.py): their objects, kept for the
    # whole run, pack at the heap's start next to the rings, and the
    # validator's garbage is freed into one hole after them rather than
    # threaded between them. Importing them starts nothing.
    import v2g.control  # noqa: F401
    try:
        cfg, board = load(path, boards)
    except _BadConfig:
        log.error("not started: fix the config (make deploy) and reset")
        return None
    clock = clockmod.from_env()
    log.set_clock(clock)
    app = App(cfg, board, clock, path, shared, rec)
    current = app
    if sys.platform == "linux":
        # SIGINT/SIGTERM as a pending set the cloud loop reads, when the
        # launcher blocked them (v2g.hal.stopsig says why)
        from v2g.hal.stopsig import StopSignals

        app.cloud.stop_signals = StopSignals()
    import gc

    # Collect early and often: small, regular collections keep the heap less
    # fragmented than waiting until an allocation fails (MicroPython's advice).
    gc.collect()
    gc.threshold(gc.mem_free() // 4 + gc.mem_alloc())
    ctrl = app.ctrl
    log.event("start", {"device_id": cfg["device_id"], "board": cfg["board"],
                        "period_ms": ctrl.period_ms, "warp": clock.warp})
    app.start_control()
    try:
        _wifi_up(cfg)
        app.cloud.run()
    except KeyboardInterrupt:
        pass
    if _keep_control_on_interrupt():
        app.cloud.stop()
        log.event("cloud_stopped", {"control": "running", "hint": "import tech; tech.status()"})
        return app
    app.shutdown()
    # the summary needs a few small blocks: the session's are free now (a
    # day with TLS leaves the heap fragmented), and the record is read into
    # the cloud link's copy (its thread, this one, is done with it): a new
    # 750-byte copy was the allocation that failed in a 104 KB heap
    gc.collect()
    try:
        from v2g.shared import state_of

        shared = app.shared
        st = shared.status.tick_stats()
        rec = shared.read(app.cloud.rec)
        fields = state_of(rec)
        if st:
            fields["tick_delay_ms"] = {"p50": st[0], "p99": st[1], "max": st[2], "ticks": st[3], "min": st[4],
                                       "min_interval": st[5], "period": ctrl.period_ms / clock.warp}
        fields["overruns"] = rec["overruns"]
        log.event("stop", fields)
    except KeyboardInterrupt:
        pass  # stopped already; only the summary line is lost
    except MemoryError:
        # 0 W and `offline` are done: a heap the day left too fragmented
        # for the summary's tables costs the summary, not the exit status
        gc.collect()
        try:
            log.event("stop", {"summary": "no heap"})
        except MemoryError:
            pass
    return app
