# On the device: the module ARGS imports (ImportError when it does not).
#
#     micropython tools/device/imports.py MODULE
try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = sys.argv[1]

__import__(ARGS)
