# tools/pty_bridge --romfs-bytes: vfs plus rom_ioctl over one ROMFS partition
# (the file $V2G_BRIDGE_ROMFS_FILE here, memory-mapped flash on a board); at
# start-up boot_mount() mounts an image found there at /rom. The unix port has
# VfsRom but no rom_ioctl; once this module is imported, `import vfs` finds
# it first (sys.modules).
import os
import sys

from vfs import *  # noqa: F401,F403

_PATH = os.getenv("V2G_BRIDGE_ROMFS_FILE")
_BLOCK = 4096  # erase block
_MIN_WRITE = 4
with open(_PATH, "rb") as _f:
    _flash = bytearray(_f.read())


def _save():
    with open(_PATH, "wb") as f:
        f.write(_flash)


def rom_ioctl(op, *args):
    if op == 1:  # number of partitions
        return 1
    if not args or args[0] != 0:
        return -19  # ENODEV
    if op == 2:  # the partition, memory-mapped
        return memoryview(_flash)
    if op == 3:  # erase: (id, length) from 0, or (id, offset, length)
        off, n = (0, args[1]) if len(args) == 2 else (args[1], args[2])
        if off < 0 or n < 0 or off % _BLOCK or off + n > len(_flash):
            return -22  # EINVAL
        n = (n + _BLOCK - 1) // _BLOCK * _BLOCK
        _flash[off:off + n] = b"\xff" * min(n, len(_flash) - off)
        _save()
        return _MIN_WRITE
    if op == 4:  # write (id, offset, data): flash bits only go 1 -> 0
        off, data = args[1], args[2]
        if off < 0 or off + len(data) > len(_flash):
            return -22
        for i in range(len(data)):
            _flash[off + i] &= data[i]
        _save()
        return 0
    if op == 5:  # end of writing
        return 0
    if op == 6:  # erase block size
        return _BLOCK
    return -22


def boot_mount():
    if _flash[:3] != b"\xd2\xcd\x31":  # no ROMFS image: boot from the filesystem
        return
    try:
        mount(VfsRom(memoryview(_flash)), "/rom")  # noqa: F405
    except OSError:
        return  # not a valid image: the board boots from its filesystem
    sys.path[:0] = ["/rom", "/rom/lib"]


sys.modules["vfs"] = sys.modules[__name__]
