# V2G charger-controller firmware (MicroPython). See README.md.
VERSION = "0.1.0"


def unload(name):
    """Forget a module used only at boot ("v2g.jsondepth"), so the GC can
    take back its RAM; imported again, it is loaded afresh."""
    import sys

    sys.modules.pop(name, None)
    globals().pop(name.split(".")[-1], None)
