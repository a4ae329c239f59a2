# On the device: the sha256 of each path in ARGS (None when it is missing),
# one repr((path, hex)) line each. hashlib.sha256 exists on the ESP32, RP2040
# and unix builds.
#
#     micropython tools/device/hashes.py PATH...
import binascii
import hashlib

try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = sys.argv[1:]


def _h(p, b=bytearray(512)):
    try:
        f = open(p, "rb")
    except OSError:
        return None
    d = hashlib.sha256()
    m = memoryview(b)
    while True:
        n = f.readinto(b)
        if not n:
            break
        d.update(m[:n])
    f.close()
    return binascii.hexlify(d.digest()).decode()


for _p in ARGS:
    print(repr((_p, _h(_p))))
