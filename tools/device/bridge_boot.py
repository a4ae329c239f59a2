# tools/pty_bridge: a board's start-up, run by each interpreter (-i -c) before
# its REPL. ARGS: {"mark": the bytes that say this interpreter's Ctrl-C
# handler is in place, "romfs": mount a ROMFS image first, "names": the files
# to run, boot.py and main.py or boot.py alone}. They run in the REPL's
# globals, as a board runs them.
#
#     micropython -i tools/device/bridge_boot.py boot.py main.py
try:
    ARGS
except NameError:  # run on its own
    import sys
    ARGS = {"mark": "", "romfs": False, "names": sys.argv[1:]}


def _v2g_boot(mark, romfs, names):
    import os, sys
    sys.stdout.write(mark)
    if romfs:
        import _bridge_romfs
        _bridge_romfs.boot_mount()
    for name in names:
        try:
            os.stat(name)
        except OSError:
            continue
        try:
            with open(name) as f:
                code = compile(f.read(), name, "exec")
            exec(code, globals())
        except SystemExit:
            # A board soft-resets when boot.py or main.py raises SystemExit.
            import machine
            machine.soft_reset()
        except BaseException as e:
            sys.print_exception(e)


_v2g_args = ARGS
del ARGS
_v2g_boot(_v2g_args["mark"], _v2g_args["romfs"], _v2g_args["names"])
del _v2g_boot, _v2g_args
