# Wall time from SNTP (RFC 4330): one 48-byte request, one reply, bounded
# by a timeout. Runs in the cloud thread (it is network I/O); the control
# loop only sees the clock become trusted, or step, and replans.
#
# When: made by the cloud link when SNTP is wanted (a board at boot and every
# ntp.resync_s; the unix port when the OS clock is unset); asks every few
# seconds growing to 5 min until a server answers, then is unloaded.
import socket
import struct
import sys
import time

from micropython import const

from v2g.board import host_port

_NTP_TO_UNIX_S = const(2208988800)  # 1900-01-01 -> 1970-01-01
_TIMEOUT_S = const(2)
_RETRY_MIN_MS = const(5000)
_RETRY_MAX_MS = const(300000)


class SntpError(Exception):
    pass


def query(host, port=123, timeout_s=_TIMEOUT_S):
    """The server's transmit time, unix seconds (int)."""
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_DGRAM)[0][-1]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout_s)
        req = bytearray(48)
        req[0] = 0x1B  # LI 0, version 3, mode 3 (client)
        s.sendto(req, addr)
        msg = s.recv(48)
    finally:
        s.close()
    if msg is None or len(msg) < 48:
        raise SntpError("short reply")
    mode = msg[0] & 7
    stratum = msg[1]
    if mode != 4 or not 1 <= stratum <= 15:
        # stratum 0 is a "kiss of death", 16 unsynchronised: not a time
        raise SntpError("not a time (mode %d, stratum %d)" % (mode, stratum))
    secs = struct.unpack("!I", msg[40:44])[0]
    if secs == 0:
        raise SntpError("transmit time 0")
    if secs < 0x80000000:
        secs += 0x100000000  # era 1, from 2036-02-07 (RFC 4330 section 3)
    return secs - _NTP_TO_UNIX_S


class TimeSync:
    def __init__(self, cfg, clock):
        n = cfg["ntp"]
        s = n["server"]
        self.host, self.port = host_port(s) if ":" in s else (s, 123)
        self.resync_ms = n["resync_s"] * 1000
        self.clock = clock
        self.on_board = sys.platform in ("esp32", "rp2")
        self.retry_ms = _RETRY_MIN_MS
        self.next_ms = time.ticks_ms()
        self.last_error = None

    def step(self):
        """One attempt when due. Returns (unix_s before, step s) on success,
        else None (raises nothing: a missing time server is not a fault)."""
        if time.ticks_diff(time.ticks_ms(), self.next_ms) < 0:
            return None
        try:
            t = query(self.host, self.port)
        except (OSError, SntpError, IndexError, ValueError) as e:
            self.last_error = type(e).__name__ + ": " + str(e)
            self.next_ms = time.ticks_add(time.ticks_ms(), self.retry_ms)
            self.retry_ms = min(self.retry_ms * 2, _RETRY_MAX_MS)
            return None
        before = self.clock.time()
        return before, self.clock.set_wall(t)
