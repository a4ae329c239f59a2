# test_deploy.py: the firmware's modules import from a ROMFS image that
# `make deploy ROMFS=1` built, mounted at /rom as a board mounts it. Prints
# "ok" when every one came from /rom/v2g/.
#
#     micropython host_tests/mp/deploy_romfs_imports.py build/deploy/unix_sim/romfs.img
import sys
import vfs

vfs.mount(vfs.VfsRom(open(sys.argv[1], "rb").read()), "/rom")
sys.path.insert(0, "/rom")
for m in ("v2g.app", "v2g.control", "v2g.cloud", "v2g.commands", "v2g.config", "v2g.chademo", "v2g.tech"):
    __import__(m)
    assert sys.modules[m].__file__.startswith("/rom/v2g/"), sys.modules[m].__file__
print("ok")
