# On the device: one repr line, the sha256 (hex) of the first ARGS bytes of
# ROMFS partition 0.
#
#     micropython tools/device/romfs_hash.py NBYTES
import binascii
import hashlib
import vfs

try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = int(sys.argv[1])

_d = vfs.rom_ioctl(2, 0)
print(repr(binascii.hexlify(hashlib.sha256(memoryview(_d)[:ARGS]).digest()).decode()))
