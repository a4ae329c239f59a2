# Two threads allocating as the firmware's do (the control loop and the
# cloud link), stopped by a signal at a random moment: argv[1] "handler"
# takes SIGINT in the port's handler (KeyboardInterrupt), "poll" reads it
# from the pending set (v2g.hal.stopsig; the launcher blocked it). Prints
# "ready" once both run and "clean" when both stopped and a last
# collection went through. tools/bench_stopsig.py runs it many times.
import gc
import sys
import time

import _thread

gc.threshold(20000)  # often, as the firmware's gc.threshold does in a small heap
stop = False
done = False
sigs = None
if sys.argv[1] == "poll":
    from v2g.hal.stopsig import StopSignals

    sigs = StopSignals()


def worker():
    global done
    keep = []
    n = 0
    while not stop:
        keep.append([n] * 8)
        if len(keep) > 200:
            keep = keep[100:]
        n += 1
        if keep[-1][0] != n - 1:
            print("corrupt", keep[-1][0], n - 1)
    done = True


_thread.start_new_thread(worker, ())
print("ready")
try:
    held = []
    k = 0
    while True:
        held.append(b"x" * 50)
        if len(held) > 100:
            held = held[50:]
        k += 1
        if sigs is not None and k % 200 == 0 and sigs.pending():
            raise KeyboardInterrupt
except KeyboardInterrupt:
    pass
stop = True
t0 = time.ticks_ms()
while not done and time.ticks_diff(time.ticks_ms(), t0) < 5000:
    time.sleep_ms(1)
gc.collect()
print("clean" if done else "worker did not stop")
