# Start-up: config first (an invalid config never starts the power stage),
# then the hardware, then the control loop until stopped.
import sys

from v2g import config, log
from v2g import clock as clockmod

EXIT_CONFIG = const(2)


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
    try:
        cfg = config.load(path)
        board = config.load_board(boards_dir, cfg["board"])
        config.check_board(cfg, board)
        return cfg, board
    except config.ConfigError as e:
        log.error("config error: " + e.path + ": " + e.rule)
        sys.exit(EXIT_CONFIG)


def build(cfg, board, clock):
    from v2g import board as boardmod
    from v2g.control import Controller
    from v2g.modbus import RtuMaster
    from v2g.sunspec import SunSpecInverter

    inv_cfg = cfg["inverter"]
    stream, baud = boardmod.inverter_stream(cfg, board)
    master = RtuMaster(stream, inv_cfg["unit"], timeout_ms=inv_cfg["timeout_ms"],
                       retries=inv_cfg["retries"], baud=baud)
    inverter = SunSpecInverter(master, inv_cfg["base_addr"], inv_cfg["revert_s"])
    return Controller(cfg, clock, inverter)


def main(argv=None):
    if argv is None:
        argv = sys.argv[1:]
    path, boards = _args(argv)
    cfg, board = load(path, boards)
    clock = clockmod.from_env()
    log.set_clock(clock)
    ctrl = build(cfg, board, clock)
    log.event("start", {"device_id": cfg["device_id"], "board": cfg["board"],
                        "period_ms": ctrl.period_ms, "warp": clock.warp})
    try:
        ctrl.run()
    except KeyboardInterrupt:
        pass
    ctrl.stop_output()
    log.event("stop", ctrl.snapshot())
