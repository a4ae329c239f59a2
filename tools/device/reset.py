# On the device: a hard reset a moment from now (time for the raw REPL to
# send its end of output), as `mpremote reset` does; a soft reset where the
# machine module has no reset().
import machine
import time

time.sleep_ms(100)
getattr(machine, "reset", machine.soft_reset)()
