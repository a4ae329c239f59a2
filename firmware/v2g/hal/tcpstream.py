# Modbus RTU frames carried over a TCP socket (the simulator, or an RS-485 to
# Ethernet gateway in "transparent"/RTU-over-TCP mode). Presents the same small
# stream interface as hal.uart485.Rs485, so the Modbus master cannot tell them
# apart:
#   write(buf) -> int, readinto(mv) -> int (non-blocking), wait(timeout_ms) -> bool,
#   discard(), close()
# and reopen() (drop the socket, connect again now; raises OSError), which an
# SLCAN bus calls to recover a lost link (hal.can_build injects this stream
# into v2g.can.slcan.SlcanBus for "slcan-tcp:HOST:PORT").
# Only the unix port uses it, but it is plain MicroPython (socket, select, errno).
import errno
import select
import socket

from micropython import const

_DISCARD_MAX_READS = const(16)  # bound: a peer that floods cannot pin us in discard()


def _send_some(sock, data):
    # Non-blocking send: EAGAIN (buffer full) is "0 bytes sent", not an error.
    try:
        return sock.send(data) or 0
    except OSError as e:
        if e.errno == errno.EAGAIN:
            return 0
        raise


class TcpStream:
    def __init__(self, host, port, connect_timeout_ms=500):
        self.host = host
        self.port = port
        self.connect_timeout_ms = connect_timeout_ms
        self.connects = 0  # successful connects so far (diagnostics: reconnect churn)
        self._sock = None
        self._poller = None
        self._scratch = bytearray(64)  # discard() reads into this; no allocation

    # -- connection -------------------------------------------------------

    def _connect(self):
        # Resolved on every connect: reconnects are rare and a gateway's
        # address may change while we run.
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(ai[0], socket.SOCK_STREAM)
        try:
            # Non-blocking connect + poll: a dead gateway costs at most
            # connect_timeout_ms, never the OS's minutes-long SYN timeout.
            sock.setblocking(False)
            try:
                sock.connect(ai[-1])
            except OSError as e:
                if e.errno != errno.EINPROGRESS:
                    raise
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            events = poller.poll(self.connect_timeout_ms)
            if not events:
                raise OSError(errno.ETIMEDOUT)
            if events[0][1] & (select.POLLERR | select.POLLHUP):
                raise OSError(errno.ECONNREFUSED)
            poller.modify(sock, select.POLLIN)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._poller = poller
        self.connects += 1

    def _drop(self):
        sock = self._sock
        self._sock = None
        self._poller = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def reopen(self):
        """Connect again now (the old socket, if any, is dropped first).
        Raises OSError when the peer is not there."""
        self._drop()
        self._connect()

    @property
    def connected(self):
        return self._sock is not None

    # -- stream interface -------------------------------------------------

    def write(self, buf):
        sock = self._sock
        if sock is None:
            self._connect()
            sock = self._sock
        total = len(buf)
        try:
            # A Modbus request fits any socket buffer: one send() nearly always
            # takes it whole, so the caller's buffer goes out as is.
            sent = _send_some(sock, buf)
            while sent < total:
                # Send buffer full (a stalled peer): wait for room, bounded.
                poller = select.poll()
                poller.register(sock, select.POLLOUT)
                if not poller.poll(self.connect_timeout_ms):
                    raise OSError(errno.ETIMEDOUT)
                sent += _send_some(sock, memoryview(buf)[sent:])
        except OSError:
            self._drop()
            raise
        return total

    def readinto(self, mv):
        sock = self._sock
        if sock is None:
            raise OSError(errno.ENOTCONN)
        try:
            n = sock.readinto(mv)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return 0
            self._drop()
            raise
        if n is None:  # non-blocking socket, nothing there yet
            return 0
        if n == 0 and len(mv):
            # Orderly close by the peer: every later read would return 0 too.
            # Drop the socket so the next write() reconnects.
            self._drop()
            raise OSError(errno.ECONNRESET)
        return n

    def wait(self, timeout_ms):
        if self._sock is None:
            # "Readable" in the poll sense: readinto() reports the error at once,
            # instead of the caller sleeping out its whole timeout.
            return True
        if timeout_ms < 0:
            timeout_ms = 0
        # ipoll allocates no result list.
        for _ in self._poller.ipoll(timeout_ms):
            return True  # POLLIN, or POLLHUP/POLLERR that readinto() will report
        return False

    def discard(self):
        # Drops whatever is already queued. A peer that has gone away is noticed
        # here and dropped quietly, so the next write() reconnects first time.
        if self._sock is None:
            return
        for _ in range(_DISCARD_MAX_READS):
            try:
                if not self.readinto(self._scratch):
                    return
            except OSError:
                return

    def close(self):
        self._drop()
