# The unix port's stand-in for a ROMFS board's boot: such a board mounts its
# ROMFS partition (memory-mapped flash) at /rom and puts /rom and /rom/lib on
# sys.path before main.py runs. The unix port has VfsRom but no flash, so
# the image is read into one buffer first; `make bench` adds exactly that
# buffer to -X heapsize and reports the heap the firmware needs beyond it.
#
#     micropython tools/romfs_boot.py IMAGE CONFIG [--boards DIR]
import sys
import vfs

image = sys.argv.pop(1)
with open(image, "rb") as f:
    f.seek(0, 2)
    rom = bytearray(f.tell())
    f.seek(0)
    f.readinto(rom)
vfs.mount(vfs.VfsRom(rom), "/rom")
# ahead of this script's own directory, as on a board
sys.path[:0] = ["/rom", "/rom/lib"]
del f, image

from v2g import app

app.main()
