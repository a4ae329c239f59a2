# tools/pty_bridge: the unix port's machine module plus reset(), as on a
# board. The unix port's machine module cannot be given attributes, but an
# extensible built-in can be shadowed by a .py file that re-exports it
# (`umachine`); the bridge puts this directory on the interpreter's path.
# The bridge names its reset flag file in $V2G_BRIDGE_RESET_FLAG.
import os

from umachine import *  # noqa: F401,F403
import umachine as _m


def reset():
    # Tell the bridge this was a hard reset (back in the friendly REPL,
    # main.py runs), then end this interpreter as a soft reset does.
    open(os.getenv("V2G_BRIDGE_RESET_FLAG"), "w").close()
    _m.soft_reset()
