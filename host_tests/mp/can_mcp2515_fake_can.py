# test_can_mcp2515.py: a fake of the documented mainline machine.CAN API
# (docs/library/machine.CAN.rst) for v2g.can.machine_can.MachineCanBus.


class FakeCAN:
    # the documented mainline machine.CAN API (docs/library/machine.CAN.rst)
    FLAG_RTR = 1
    FLAG_EXT_ID = 2
    FLAG_UNORDERED = 4
    RECV_ERR_FULL = 1
    RECV_ERR_OVERRUN = 2
    STATE_STOPPED = 0
    STATE_ACTIVE = 1
    STATE_WARNING = 2
    STATE_PASSIVE = 3
    STATE_BUS_OFF = 4
    FILTERS_MAX = 4
    TX_QUEUE_LEN = 3

    def __init__(self):
        self.rx = []  # (id, data, flags, errors); rx_i: next to hand out
        self.rx_i = 0
        self.tx = []
        self.st = 1
        self.filters = "unset"
        self.restarts = 0
        self.views = None
        self.log = True

    def set_filters(self, f):
        if f is not None and len(f) > self.FILTERS_MAX:
            raise ValueError("too many filters")
        self.filters = f

    def send(self, cid, data, flags=0):
        if self.st == self.STATE_BUS_OFF:
            raise OSError(5)
        if len(self.tx) >= self.TX_QUEUE_LEN:
            return None
        if self.log:
            self.tx.append((cid, bytes(data), flags))
        return 0

    def recv(self, arg=None):
        if self.rx_i >= len(self.rx):
            return None
        cid, data, flags, errs = self.rx[self.rx_i]
        self.rx_i += 1
        if self.views is None:
            self._make_views(arg[1])
        full = self.views[8]
        for i in range(len(data)):
            full[i] = data[i]
        arg[0] = cid
        arg[1] = self.views[len(data)]
        arg[2] = flags
        arg[3] = errs
        return arg

    def _make_views(self, mv):
        # Its own method: a comprehension in recv() would capture `arg` in a
        # cell, and that cell is allocated on every call.
        self.views = [mv[:n] for n in range(9)]

    def state(self):
        return self.st

    def restart(self):
        self.restarts += 1
        self.st = self.STATE_ACTIVE
