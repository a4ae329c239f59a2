# On the device, after the copy: it loads what it got. The config is checked
# with the firmware's validator on the device (TLS files must be there too).
# Each module of ARGS is imported on its own and unloaded again, so the check
# needs no more RAM than the largest module with its imports. lib/ comes on
# sys.path through the firmware's own start-up code, as main.py does at boot.
# One repr line per check: ("config", error or None), ("import", module,
# error or None). Run in the directory that holds config.json.
#
#     micropython tools/device/self_test.py MODULE...
import gc
import sys

try:
    ARGS
except NameError:  # run on its own
    ARGS = sys.argv[1:]

from v2g import libpath

libpath.add()
from v2g import config

try:
    _c = config.load("config.json")
    config.check_board(_c, config.load_board("board_configs", _c["board"]))
    print(repr(("config", None)))
except config.ConfigError as e:
    print(repr(("config", e.path + ": " + e.rule)))
_c = None
for _m in ARGS:
    try:
        __import__(_m)
        print(repr(("import", _m, None)))
    except Exception as e:
        print(repr(("import", _m, type(e).__name__ + ": " + str(e))))
    for _k in [k for k in sys.modules if k == "v2g" or k.startswith("v2g.")]:
        del sys.modules[_k]
    gc.collect()
