# A CAN bus and a scripted car for test_chademo.py's MicroPython half
# (host_tests/mp/chademo_cases.py): the session under test is the real
# v2g.chademo.ChademoSession, ticked as the control loop ticks it.
from v2g.can import CanBus, Frame
from v2g.chademo import ChademoSession
from v2g.clock import Clock


class FakeBus(CanBus):
    # A bus with a preallocated receive queue and a TX log; tx_room limits
    # how many frames send() takes per tick (TX buffers full).
    def __init__(self, size=64):
        super().__init__()
        self.q = [Frame() for _ in range(size)]
        self.head = 0
        self.n = 0
        self.sent = []
        self.sent_count = 0
        self.log = True
        self.tx_room = 1000
        self.room = 1000
        self.st = "active"
        self.stuck = False
        self.recovers = 0

    def push(self, cid, data, dlc=-1, ext=False, rtr=False):
        f = self.q[(self.head + self.n) % len(self.q)]
        if dlc < 0:
            dlc = len(data)
        f.id = cid
        f.ext = ext
        f.rtr = rtr
        f.dlc = dlc
        for i in range(min(dlc, len(data))):
            f.data[i] = data[i]
        self.n += 1

    def recv_into(self, f):
        if not self.n:
            return False
        s = self.q[self.head]
        f.id = s.id
        f.ext = s.ext
        f.rtr = s.rtr
        f.dlc = s.dlc
        for i in range(s.dlc):
            f.data[i] = s.data[i]
        self.head = (self.head + 1) % len(self.q)
        self.n -= 1
        return True

    def send(self, cid, data, ext=False):
        if self.room <= 0:
            return False
        self.room -= 1
        self.sent_count += 1
        if self.log:
            self.sent.append((cid, bytes(data)))
        return True

    def refill(self):
        self.room = self.tx_room

    def state(self):
        return self.st

    def recover(self):
        self.recovers += 1
        if not self.stuck:
            self.st = "active"

    def last(self, cid):
        """The last frame sent with this ID (bytes), or None."""
        for c, d in reversed(self.sent):
            if c == cid:
                return d
        return None


def h(s):
    return bytes.fromhex(s)


# the Leaf's frames in steady charging (capture, t = 30 s)
F100 = h("00000000B3016400")
F101 = h("00FF3C0000DE0000")
F200 = h("F0000000FA0043B2")


def f102(req=14, faults=0, status=0xC1, soc=0x49):
    return bytes((2, 0x9A, 1, req, faults, status, soc, 0))


def car_cycle(bus, req=14, faults=0, status=0xC1, soc=0x49, f200=F200):
    bus.push(0x100, F100)
    bus.push(0x101, F101)
    bus.push(0x102, f102(req, faults, status, soc))
    bus.push(0x200, f200)


def charging_session(req_w=3000, **kw):
    # a session driven into the charging loop, one 100 ms tick per car
    # cycle: handshake frames, then contactors closed and current asked, as
    # the Leaf does
    bus = FakeBus()
    s = ChademoSession(bus, Clock(), 500, 15, **kw)
    t = 1000
    for st in (0xC8, 0xC9, 0xC1):
        car_cycle(bus, 0, 0, st)
        s.tick(t, req_w)
        t += 100
    car_cycle(bus, 14)
    s.tick(t, req_w)
    return bus, s, t
