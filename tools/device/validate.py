# The site config through the firmware's own loader, on the unix port, exactly
# as the board will load it. Prints one JSON line; secrets stay inside.
# Exit 2 with "config error: PATH: RULE" on stderr for an invalid config.
#
#     micropython tools/device/validate.py CONFIG BOARDS_DIR
import json
import sys

from v2g import config

path, boards = sys.argv[1], sys.argv[2]
try:
    cfg = config.load(path)
    board = config.load_board(boards, cfg["board"])
    config.check_board(cfg, board)
except config.ConfigError as e:
    sys.stderr.write("config error: " + e.path + ": " + e.rule + "\n")
    sys.exit(2)
print(json.dumps({"board": cfg["board"], "device_id": cfg["device_id"], "tls": cfg["mqtt"]["tls"]}))
