# The port's own CAN controller (mainline `machine.CAN`, where the firmware
# has one) presented as the CanBus interface (v2g.can).
#
# The machine.CAN object is injected (hal.can_build makes it), so the unix
# port tests this adapter with a fake that follows the documented API:
#   send(id, data, flags=0) -> buffer index, or None when the queue is full;
#       OSError when bus off
#   recv(arg) -> arg filled as [id, memoryview(data), flags, errors], or None;
#       the memoryview in arg is resized to the frame's length, its backing
#       bytearray is ours (8 bytes), so receiving allocates nothing
#   set_filters(None | [(id, mask, flags), ...]); state(); restart()
#   FLAG_EXT_ID, FLAG_RTR, RECV_ERR_OVERRUN, STATE_* constants
# pyb.CAN (stm32) has another argument order and is not handled here.
from micropython import const

from v2g.can import (
    STATE_ACTIVE,
    STATE_BUS_OFF,
    STATE_PASSIVE,
    STATE_WARNING,
    CanBus,
    check_frame,
)

_RX_SPINS = const(4)  # bound on recv_into's loop over filtered-out frames


class MachineCanBus(CanBus):
    def __init__(self, can):
        super().__init__()
        self._can = can
        self._rx_buf = bytearray(8)
        self._rx = [0, memoryview(self._rx_buf), 0, 0]
        self._flag_ext = can.FLAG_EXT_ID
        self._flag_rtr = can.FLAG_RTR
        self._err_overrun = can.RECV_ERR_OVERRUN
        # STOPPED (not initialised) is "nothing gets through" as bus off is;
        # recover() restarts either.
        self._states = {
            can.STATE_ACTIVE: STATE_ACTIVE,
            can.STATE_WARNING: STATE_WARNING,
            can.STATE_PASSIVE: STATE_PASSIVE,
            can.STATE_BUS_OFF: STATE_BUS_OFF,
            can.STATE_STOPPED: STATE_BUS_OFF,
        }
        self._bus_off = False
        # machine.CAN receives nothing until filters are set.
        can.set_filters(None)

    def send(self, can_id, data, ext=False):
        check_frame(can_id, data, ext)
        try:
            idx = self._can.send(can_id, data, self._flag_ext if ext else 0)
        except OSError:
            self._note_state(STATE_BUS_OFF)
            return False
        if idx is None:
            return False
        self.tx_frames += 1
        return True

    def recv_into(self, frame):
        can = self._can
        rx = self._rx
        for _ in range(_RX_SPINS):
            res = can.recv(rx)
            if res is None:
                return False
            if res[3] & self._err_overrun:
                self.rx_overflows += 1
            flags = res[2]
            mv = res[1]
            n = len(mv)
            if n > 8:
                n = 8
            frame.id = res[0]
            frame.ext = bool(flags & self._flag_ext)
            frame.rtr = bool(flags & self._flag_rtr)
            frame.dlc = n
            d = frame.data
            for i in range(n):
                d[i] = mv[i]
            if self._accepts(frame):
                self.rx_frames += 1
                return True
        return False

    def set_filters(self, ids):
        super().set_filters(ids)
        if ids is None:
            self._can.set_filters(None)
            return
        try:
            self._can.set_filters([(i, 0x7FF, 0) for i in ids])
        except ValueError:
            # More than FILTERS_MAX: take everything, filter in software.
            self._can.set_filters(None)

    def _note_state(self, state):
        off = state == STATE_BUS_OFF
        if off and not self._bus_off:
            self.bus_off_count += 1
        self._bus_off = off

    def state(self):
        s = self._states.get(self._can.state(), STATE_BUS_OFF)
        self._note_state(s)
        return s

    def recover(self):
        self._can.restart()
        self._bus_off = False
