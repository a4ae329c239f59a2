# On the device: each directory in ARGS (parents first) made unless it exists.
#
#     micropython tools/device/mkdirs.py DIR...
import os

try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = sys.argv[1:]

for _d in ARGS:
    try:
        os.mkdir(_d)
    except OSError as e:
        if e.errno != 17:  # EEXIST
            raise
