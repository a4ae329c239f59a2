# On the device, asked before the soft reset: can the board reset and still
# be there? One repr line, (machine has reset(), the current directory).
# Every board's machine has reset(), and tools.pty_bridge gives the unix port
# one. A plain unix-port REPL has none, and its soft reset (Ctrl-D) ends the
# process, taking the pty's other end (socat) with it: it is never reset.
import machine
import os

print(repr((hasattr(machine, "reset"), os.getcwd())))
