# <firmware root>/lib on sys.path, where a board's default path has /lib.
# The unix port's default path has no lib at all, so umqtt, which the deploy
# copies to lib/, would not import there. Run by main.py at start-up and by
# the deploy's self-test on the device, so both import the same way.
import sys


def add(main_file=""):
    """main_file: main.py's __file__ ("main.py" on a board, where the root
    is the current directory "/"; a path on the unix port) -> the lib
    directory, now on sys.path (a board's "/lib" is there already)."""
    root = main_file.rpartition("/")[0]
    if not root:
        import os

        root = os.getcwd()
    lib = root.rstrip("/") + "/lib"
    if lib not in sys.path:
        # after .frozen, as on a board: a frozen module shadows a copy in lib/
        i = sys.path.index(".frozen") + 1 if ".frozen" in sys.path else len(sys.path)
        sys.path.insert(i, lib)
    return lib
