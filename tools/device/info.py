# On the device: one repr line, (version, sys.implementation._mpy (None
# without .mpy support), sys.platform, the machine's description).
import sys

_i = sys.implementation
print(repr((tuple(_i.version[:3]), getattr(_i, "_mpy", None), sys.platform, getattr(_i, "_machine", ""))))
