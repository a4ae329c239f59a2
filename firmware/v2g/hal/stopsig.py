# Stop signals on the unix port: polled, never handled.
#
# The unix port turns SIGINT into KeyboardInterrupt from a signal handler,
# and that handler breaks its garbage collector: a collecting thread stops
# the other one with a signal and waits on a semaphore without retrying on
# EINTR (mp_thread_gc_others ignores sem_wait's result in the PyPI build),
# so a SIGINT that lands during that wait ends it early and the collection
# goes on while the other thread is still marking. Stopped by SIGINT at a
# random moment, two allocating threads failed 30 runs in 40 ("heap is
# locked", hangs), and none in 40 read this way (`make bench`: stopsig); CI
# saw the firmware hang in its stop. So whoever starts the firmware (tools/run_unix.py, the test
# harness: tools/children.block_stop_signals) blocks SIGINT and SIGTERM in
# it: no handler runs, the signal stays pending for the process, and the
# main thread reads the pending set here between cloud steps and stops as
# for Ctrl-C. A firmware started with the signals open (by hand in a
# terminal) keeps the port's handler: `enabled` is False and nothing is read.
#
# Allocation-free after start: the file stays open and is scanned byte by
# byte through a 64-byte buffer (the ROMFS heap has no 1.4 KB to spare for
# the whole file every poll).
from micropython import const

_STOP_BITS = const(0x4002)  # SIGINT (2) and SIGTERM (15): bits 1 and 14
_KEY_PENDING = b"ShdPnd:"  # pending for the whole process (kill(pid))
_KEY_BLOCKED = b"SigBlk:"  # this thread's mask, inherited from the launcher


class StopSignals:
    def __init__(self, path="/proc/self/status"):
        self._f = None
        self._buf = bytearray(64)
        self.seen = False
        try:
            self._f = open(path, "rb")
        except OSError:
            self.enabled = False  # a board, or no procfs: the port's own Ctrl-C
            return
        blocked = self._field(_KEY_BLOCKED)
        self.enabled = blocked is not None and blocked & _STOP_BITS == _STOP_BITS
        if not self.enabled:
            self.close()

    def pending(self):
        """True once SIGINT or SIGTERM has arrived (then stays True)."""
        if self.seen or not self.enabled:
            return self.seen
        v = self._field(_KEY_PENDING)
        if v is not None and v & _STOP_BITS:
            self.seen = True
            self.close()  # the signal stays pending; nothing more to read
        return self.seen

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def _field(self, key):
        # the low 16 bits of the hex field `key` (a "Name:\tHEX" line), or None
        f = self._f
        f.seek(0)
        buf = self._buf
        klen = len(key)
        at_start = True
        k = 0  # key bytes matched at this line's start; klen: reading the value
        v = 0
        while True:
            n = f.readinto(buf)
            if not n:
                return None
            for i in range(n):
                c = buf[i]
                if c == 10:  # newline
                    if k == klen:
                        return v
                    at_start = True
                    k = 0
                    continue
                if k == klen:
                    d = c - 48 if 48 <= c <= 57 else c - 87 if 97 <= c <= 102 else -1
                    if d >= 0:
                        v = ((v << 4) | d) & 0xFFFF
                elif at_start:
                    if c == key[k]:
                        k += 1
                    else:
                        at_start = False
