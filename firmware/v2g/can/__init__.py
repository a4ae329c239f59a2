# The one CAN interface every bus driver presents (MCP2515 on SPI, the port's
# machine.CAN, an SLCAN adapter on the unix port), so protocol code such as
# v2g.chademo never knows which one it talks to.
#
#   send(can_id, data, ext=False) -> bool
#       Queue one data frame (data: bytes/bytearray/memoryview, 0..8 bytes).
#       False when the transmit buffers are full (or the link is down): the
#       caller keeps the frame and tries again later; nothing ever blocks.
#   recv_into(frame) -> bool
#       Non-blocking. Copies the oldest received frame into `frame` (a Frame,
#       allocated once by the caller) and returns True; False when none.
#   set_filters(ids)
#       Accept only these standard (11-bit) IDs; None = accept everything.
#       Drivers use hardware filters where they have them and filter in
#       software otherwise (or beyond the hardware's capacity), so the caller
#       may rely on the result either way.
#   state() -> "active" | "warning" | "passive" | "bus_off"
#       The controller's error state (ISO 11898-1 fault confinement):
#       warning at TEC or REC >= 96, passive at >= 128, bus off at TEC > 255.
#       A link that is down (SLCAN serial line or socket lost) is "bus_off":
#       for the protocol above, both mean "nothing gets through".
#   recover()
#       Leave bus off (or reopen a lost link). Pending transmissions are lost.
#
# Counters (plain ints, only ever incremented, so a reader can diff them):
#   rx_frames      frames handed out by recv_into
#   tx_frames      frames accepted by send
#   rx_overflows   frames the hardware or the link dropped because nobody
#                  read them in time (MCP2515 RXnOVR, FIFO overrun, SLCAN "F")
#   errors         anything else that went wrong: bus/message errors,
#                  garbage on an SLCAN line, NACKed commands
#   bus_off_count  times the controller went bus off (or the link was lost)
#
# Steady state allocates nothing: one Frame record is reused for every frame,
# drivers keep preallocated buffers, and states and counters are small ints
# and interned strings.
from micropython import const

STATE_ACTIVE = "active"
STATE_WARNING = "warning"
STATE_PASSIVE = "passive"
STATE_BUS_OFF = "bus_off"

_MAX_STD_ID = const(0x7FF)
_MAX_EXT_ID = const(0x1FFFFFFF)


class Frame:
    """One CAN frame. Allocate once, pass to recv_into() over and over."""

    def __init__(self):
        self.id = 0
        self.ext = False  # 29-bit identifier
        self.rtr = False  # remote request: dlc is the requested length, no data
        self.dlc = 0  # 0..8
        self.data = bytearray(8)  # only data[:dlc] is meaningful

    def set(self, can_id, data, ext=False, rtr=False):
        """Fill from values (tests, simulators); copies data, no allocation."""
        n = len(data)
        if n > 8:
            raise ValueError("CAN data is at most 8 bytes")
        self.id = can_id
        self.ext = ext
        self.rtr = rtr
        self.dlc = n
        d = self.data
        for i in range(n):
            d[i] = data[i]
        return self


def check_frame(can_id, data, ext):
    """ValueError for a frame no controller could send; returns len(data)."""
    n = len(data)
    if n > 8:
        raise ValueError("CAN data is at most 8 bytes")
    if can_id < 0 or can_id > (_MAX_EXT_ID if ext else _MAX_STD_ID):
        raise ValueError("CAN id out of range")
    return n


class CanBus:
    """Base of every driver: the counters and the software acceptance filter.
    Subclasses implement send, recv_into, state and recover, and may override
    set_filters to program hardware filters (calling this one too)."""

    def __init__(self):
        self.rx_frames = 0
        self.tx_frames = 0
        self.rx_overflows = 0
        self.errors = 0
        self.bus_off_count = 0
        self._accept_ids = None  # tuple of standard IDs, or None = everything

    def set_filters(self, ids):
        if ids is None:
            self._accept_ids = None
            return
        for i in ids:
            if i < 0 or i > _MAX_STD_ID:
                raise ValueError("filters take standard (11-bit) IDs")
        self._accept_ids = tuple(ids)

    def _accepts(self, frame):
        # `in` on a tuple allocates nothing; the lists are a handful long.
        ids = self._accept_ids
        if ids is None:
            return True
        return not frame.ext and frame.id in ids

    def counters(self):
        """Diagnostics snapshot (allocates: not for the hot path)."""
        return {
            "rx_frames": self.rx_frames,
            "tx_frames": self.tx_frames,
            "rx_overflows": self.rx_overflows,
            "errors": self.errors,
            "bus_off_count": self.bus_off_count,
            "state": self.state(),
        }

    # -- to be provided by each driver

    def send(self, can_id, data, ext=False):
        raise NotImplementedError

    def recv_into(self, frame):
        raise NotImplementedError

    def state(self):
        raise NotImplementedError

    def recover(self):
        raise NotImplementedError
