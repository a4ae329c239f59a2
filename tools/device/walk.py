# On the device: every file below the directory ARGS, one repr(path) line
# each; nothing for a directory that does not exist.
#
#     micropython tools/device/walk.py DIR
import os

try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = sys.argv[1]


def _walk(d):
    try:
        it = list(os.ilistdir(d))
    except OSError:
        return
    for e in it:
        p = d + "/" + e[0]
        if e[1] & 0x4000:
            _walk(p)
        else:
            print(repr(p))


_walk(ARGS)
