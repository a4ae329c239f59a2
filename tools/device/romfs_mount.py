# On the device: ROMFS partition 0 mounted at /rom as the board's boot does
# (mpremote unmounts it to write), with /rom and /rom/lib first on sys.path,
# for the import self-test.
import sys
import vfs

_d = vfs.rom_ioctl(2, 0)
try:
    vfs.umount("/rom")
except OSError:
    pass
vfs.mount(vfs.VfsRom(_d), "/rom")
if "/rom" not in sys.path:
    sys.path[:0] = ["/rom", "/rom/lib"]  # first, as the board's boot puts them
