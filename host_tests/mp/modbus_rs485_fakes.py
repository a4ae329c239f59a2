# test_modbus.py: a fake DE pin and a fake UART for v2g.hal.uart485.Rs485;
# both log what happens, with the time, to LOG.
import time

LOG = []


class FakePin:
    def __init__(self):
        self.v = None

    def value(self, v=None):
        if v is None:
            return self.v
        self.v = v
        LOG.append(("de", v, time.ticks_us()))


class FakeUart:
    # rx: bytes that "arrive" arrive_ms after construction (or at once).
    def __init__(self, pin, with_flush=True, rx=b'', arrive_ms=0, short_write=False):
        self.pin = pin
        self.rx = bytearray(rx)
        self.t0 = time.ticks_ms()
        self.arrive_ms = arrive_ms
        self.short_write = short_write
        self.sent = bytearray()
        if with_flush:
            self.flush = self._flush

    def write(self, buf):
        LOG.append(("write", self.pin.v if self.pin else None, time.ticks_us()))
        if self.short_write:
            return None
        self.sent += buf
        return len(buf)

    def _flush(self):
        LOG.append(("flush", self.pin.v if self.pin else None, time.ticks_us()))

    def any(self):
        if time.ticks_diff(time.ticks_ms(), self.t0) < self.arrive_ms:
            return 0
        return len(self.rx)

    def readinto(self, buf, nbytes=None):
        n = min(len(buf), len(self.rx), nbytes if nbytes is not None else len(buf))
        if self.pin is not None:
            LOG.append(("read", self.pin.v, time.ticks_us()))
        buf[:n] = self.rx[:n]
        self.rx = self.rx[n:]
        return n
