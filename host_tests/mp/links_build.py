# Builds the inverter stream (board) and the vehicle bus (hal.can_build) from
# a site config validated here, as app.build does, and prints one JSON line
# (host_tests/test_links.py).
#   micropython links_build.py CONFIG.json BOARDS_DIR
import json
import sys

from v2g import board as boardmod
from v2g import config
from v2g.hal.can_build import vehicle_bus

cfg = config.load(sys.argv[1])
board = config.load_board(sys.argv[2], cfg["board"])
config.check_board(cfg, board)
stream, baud = boardmod.inverter_stream(cfg, board)
out = {"stream": [type(stream).__name__, stream.host, stream.port, baud]}
if cfg["vehicle"]["link_parsed"] is not None:
    bus = vehicle_bus(cfg, board)
    out["bus"] = [type(bus).__name__, bus.state(), type(bus._stream).__name__]
    bus.close()
# a link kind config never hands out is refused, not guessed at
for build, cfg2 in ((boardmod.inverter_stream, {"inverter": {"link_parsed": ("serial",)}}),
                    (vehicle_bus, {"vehicle": {"link_parsed": ("vcan",)}})):
    try:
        build(cfg2, board)
        out.setdefault("refused", []).append(None)
    except ValueError as e:
        out.setdefault("refused", []).append(str(e))
print(json.dumps(out))
