# RS-485 half-duplex line on a UART, with the same small stream interface as
# hal.tcpstream.TcpStream:
#   write(buf) -> int, readinto(mv) -> int (non-blocking), wait(timeout_ms) -> bool,
#   discard(), close()
#
# The UART and the driver-enable pin are injected (board.py builds them), so
# this module never imports machine and the unix port tests it with fakes.
#
# Why DE is driven by hand: UART(flow=RTS) is modem flow control, not RS-485
# driver enable. DE must be high for the whole frame and low again before the
# slave answers (typically after t3.5), so write() raises DE, writes, waits until
# the last stop bit has left the shift register, then releases the bus.
# With de_pin=None the transceiver switches direction by itself.
import time

from micropython import const

_BITS_PER_CHAR = const(11)  # start + 8 data + parity (or 2nd stop) + stop
_DISCARD_MAX_READS = const(32)  # bound: a babbling line cannot pin us in discard()


class Rs485:
    def __init__(self, uart, de_pin=None, de_active=1, baud=9600):
        self._uart = uart
        self._de = de_pin
        self._de_on = 1 if de_active else 0
        self.baud = baud
        # One character time, rounded up: waiting a hair longer is harmless,
        # dropping DE early truncates the last byte.
        self.char_us = (_BITS_PER_CHAR * 1000000 + baud - 1) // baud
        # Sleep between any() polls: data cannot arrive faster than a character,
        # and 200 us keeps CPU use low at high baud rates.
        self._poll_us = max(self.char_us, 200)
        self._has_flush = hasattr(uart, "flush")
        self._scratch = bytearray(32)
        if de_pin is not None:
            de_pin.value(1 - self._de_on)  # listen until we have something to say

    def write(self, buf):
        uart = self._uart
        de = self._de
        nbytes = len(buf)
        if de is not None:
            de.value(self._de_on)
        try:
            start_us = time.ticks_us()
            n = uart.write(buf)
            if self._has_flush:
                # flush() returns when the FIFO is empty; the last character may
                # still be in the shift register, hence one more character time.
                uart.flush()
                time.sleep_us(self.char_us)
            else:
                # write() may return as soon as the bytes are queued: wait out the
                # frame's own wire time plus one character.
                left_us = (nbytes + 1) * self.char_us - time.ticks_diff(time.ticks_us(), start_us)
                if left_us > 0:
                    time.sleep_us(left_us)
        finally:
            if de is not None:
                de.value(1 - self._de_on)
        if n is None or n < nbytes:
            # machine.UART.write returns None (or a short count) on its timeout.
            raise OSError(5)  # EIO
        return nbytes

    def readinto(self, mv):
        avail = self._uart.any()
        if not avail:
            return 0
        if avail > len(mv):
            avail = len(mv)
        # Asking for no more than any() reported means readinto never blocks
        # on the UART's own timeout.
        n = self._uart.readinto(mv, avail)
        return n or 0

    def wait(self, timeout_ms):
        uart = self._uart
        if uart.any():
            return True
        deadline_ms = time.ticks_add(time.ticks_ms(), timeout_ms if timeout_ms > 0 else 0)
        while time.ticks_diff(deadline_ms, time.ticks_ms()) > 0:
            time.sleep_us(self._poll_us)
            if uart.any():
                return True
        return False

    def discard(self):
        scratch = self._scratch
        for _ in range(_DISCARD_MAX_READS):
            if not self.readinto(scratch):
                return

    def close(self):
        if self._de is not None:
            self._de.value(1 - self._de_on)
