# On the device: the file ARGS removed (OSError when it cannot be).
#
#     micropython tools/device/remove.py PATH
import os

try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = sys.argv[1]

os.remove(ARGS)
