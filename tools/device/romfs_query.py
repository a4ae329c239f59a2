# On the device: one repr line, the size of ROMFS partition 0, or None
# without ROMFS support.
import vfs

if not hasattr(vfs, "rom_ioctl") or vfs.rom_ioctl(1) <= 0:
    print(repr(None))
else:
    _d = vfs.rom_ioctl(2, 0)
    print(repr(_d.ioctl(4, 0) * _d.ioctl(5, 0) if hasattr(_d, "ioctl") else len(_d)))
