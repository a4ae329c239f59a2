# MQTT session on micropython-lib's umqtt.simple, made safe for a device that
# must never hang on the network.
#
# umqtt.simple opens its own socket with no timeout, reads any payload whole
# into RAM, and (1.3.4 vs newer) takes TLS options in incompatible forms. So:
#  - this module opens the TCP connection itself (with a timeout), wraps it in
#    TLS itself (DER CA, optional client cert, hostname verified; never a
#    fallback to plain TCP), and hands the ready stream to umqtt through the
#    module-global `socket` that every umqtt.simple version uses;
#  - the stream keeps its timeout: umqtt's setblocking(True) restores the
#    timeout instead of blocking forever on a broker that stopped answering;
#  - wait_msg is overridden (same wire logic) to discard payloads larger than
#    the command limit without allocating them, and to note when anything
#    arrived, for keepalive.
#  - publish is our own (same packet): QoS 1 may return before the PUBACK.
# Only call forms that umqtt.simple 1.3.4 and the newer frozen one both
# accept are used: MQTTClient(client_id, server, port, user, password,
# keepalive), set_last_will, connect(clean_session), subscribe, check_msg,
# ping, disconnect, and the attributes sock, pid, cb, _send_str, _recv_len.
import socket
import time

import umqtt.simple as _umqtt

_DISCARD_CHUNK = const(256)
PKT_MIN = const(512)  # a telemetry record or state fits; grown for more


class TlsError(OSError):
    pass


class BrokerClosed(OSError):
    """The broker closed the session (end of stream): among other reasons
    because another client connected with the same client id."""


class _Stream:
    """A connected (TLS) socket that umqtt believes it created."""

    def __init__(self, sock, raw, timeout_s):
        self.s = sock
        self.raw = raw
        self.timeout_s = timeout_s

    def connect(self, addr):
        pass  # already connected by open_stream()

    def read(self, n):
        return self.s.read(n)

    def readinto(self, buf):
        return self.s.readinto(buf)

    def write(self, buf, n=None):
        if n is not None:
            buf = memoryview(buf)[:n]
        return self.s.write(buf)

    def settimeout(self, timeout_s):
        """For every later blocking read and write, and a publish's wait
        for its PUBACK."""
        self.timeout_s = timeout_s
        self.raw.settimeout(timeout_s)

    def setblocking(self, flag):
        if flag:
            self.raw.settimeout(self.timeout_s)
        else:
            self.raw.settimeout(0)

    def close(self):
        try:
            self.s.close()
        finally:
            if self.raw is not self.s:
                try:
                    self.raw.close()
                except OSError:
                    pass


class _SocketShim:
    """Stands in for the socket module inside umqtt.simple for one connect."""

    pending = None

    def socket(self, *args):
        s = self.pending
        self.pending = None
        return s

    def getaddrinfo(self, host, port, *args):
        return [(0, 0, 0, "", (host, port))]


_shim = _SocketShim()
_umqtt.socket = _shim


def _read_file(path):
    with open(path, "rb") as f:
        return f.read()


def tls_context(tls):
    """An SSLContext for tls = {"ca", optional "cert"/"key"} (DER files):
    server certificate and host name verified. Made once and reused for
    every connection: a reconnect then needs no 3 KB block of a heap that
    a day of running has fragmented."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED  # the unix port does not verify by default
    ctx.load_verify_locations(cadata=_read_file(tls["ca"]))
    if tls.get("cert"):
        ctx.load_cert_chain(_read_file(tls["cert"]), _read_file(tls["key"]))
    return ctx


def open_stream(host, port, timeout_s, ctx=None):
    """TCP, and TLS when ctx (from tls_context) is given, with a timeout.
    Raises OSError (TlsError for certificate problems); never falls back
    to plain TCP."""
    addr = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0][-1]
    raw = socket.socket()
    raw.settimeout(timeout_s)
    try:
        raw.connect(addr)
        if ctx is None:
            return _Stream(raw, raw, timeout_s)
        try:
            s = ctx.wrap_socket(raw, server_hostname=host)
        except (OSError, ValueError) as e:
            raise TlsError("TLS: " + _tls_reason(e))
        return _Stream(s, raw, timeout_s)
    except BaseException:
        raw.close()
        raise


def _tls_reason(e):
    text = " ".join(str(e).split())
    if "CERT" in text.upper() or "VERIFY" in text.upper():
        return "certificate not trusted or wrong host name (" + text + ")"
    return text


class Client(_umqtt.MQTTClient):
    max_payload = 4096

    def __init__(self, client_id, server, port, user=None, password=None, keepalive=0, pkt=None):
        super().__init__(client_id, server, port, user, password, keepalive)
        self.last_rx_ms = time.ticks_ms()
        self.last_tx_ms = self.last_rx_ms
        self.inflight = {}  # pid -> True until its PUBACK
        # one packet buffer, not a fresh one per publish (several a second):
        # that fragments a small heap. The caller may lend one made at boot.
        self._pkt = bytearray(PKT_MIN) if pkt is None else pkt

    def open(self, stream, clean_session=True):
        _shim.pending = stream
        try:
            present = self.connect(clean_session)
        except Exception:
            stream.close()
            raise
        now = time.ticks_ms()
        self.last_rx_ms = self.last_tx_ms = now
        return present

    def wait_msg(self):
        res = self.sock.read(1)
        self.sock.setblocking(True)
        if res is None:
            return None
        if res == b"":
            raise BrokerClosed("closed by the broker")
        self.last_rx_ms = time.ticks_ms()
        op = res[0]
        if op == 0xD0:  # PINGRESP
            if self.sock.read(1) != b"\0":
                raise OSError(-2)
            return None
        if op == 0x40:  # PUBACK: ours to account for
            b = self.sock.read(3)
            if b[0] != 2:
                raise OSError(-2)
            self.inflight.pop((b[1] << 8) | b[2], None)
            return None
        if op & 0xF0 != 0x30:
            return op  # SUBACK...: umqtt's caller reads the rest
        sz = self._recv_len()
        b = self.sock.read(2)
        topic_len = (b[0] << 8) | b[1]
        if topic_len + 2 > sz or topic_len > 256:
            raise OSError(-3)  # protocol error: drop the connection
        topic = self.sock.read(topic_len)
        sz -= topic_len + 2
        pid = 0
        if op & 6:
            b = self.sock.read(2)
            pid = (b[0] << 8) | b[1]
            sz -= 2
        if sz > self.max_payload:
            # too large for the heap: read it away in small pieces
            while sz > 0:
                n = min(sz, _DISCARD_CHUNK)
                got = self.sock.read(n)
                if not got:
                    raise OSError(-4)
                sz -= len(got)
            msg = None
        else:
            msg = self.sock.read(sz) if sz else b""
        if op & 6 == 4:
            raise OSError(-5)  # QoS 2 is not used here
        self.cb(topic, msg)
        if pid:
            self.sock.write(bytes((0x40, 2, pid >> 8, pid & 0xFF)))
        return op

    def publish(self, topic, msg, retain=False, qos=0, wait=True):
        """Like umqtt's publish, but a QoS 1 publish can return before its
        PUBACK (wait=False); wait_msg() retires the PUBACKs. umqtt's own
        publish waits for each PUBACK and meanwhile runs the command
        callback, which lets a flood of commands pile up in RAM."""
        pid = 0
        sz = 2 + len(topic) + len(msg)
        if qos:
            self.pid = self.pid % 65535 + 1
            pid = self.pid
            sz += 2
        # One write per packet: several small writes meet Nagle's algorithm
        # and delayed ACKs (40 ms each on Linux), and cost a TLS record each.
        if len(self._pkt) < 5 + sz:
            self._pkt = bytearray((5 + sz + 255) & ~255)
        pkt = self._pkt
        pkt[0] = 0x30 | qos << 1 | (1 if retain else 0)
        i = 1
        n = sz
        while n > 0x7F:
            pkt[i] = (n & 0x7F) | 0x80
            n >>= 7
            i += 1
        pkt[i] = n
        i += 1
        pkt[i] = len(topic) >> 8
        pkt[i + 1] = len(topic) & 0xFF
        i += 2
        pkt[i : i + len(topic)] = topic
        i += len(topic)
        if qos:
            pkt[i] = pid >> 8
            pkt[i + 1] = pid & 0xFF
            i += 2
            self.inflight[pid] = True
        pkt[i : i + len(msg)] = msg
        self.sock.write(pkt, i + len(msg))
        self.last_tx_ms = time.ticks_ms()
        if qos and wait:
            # A TLS read that times out returns None rather than raising:
            # without a deadline a lost PUBACK would wait here for ever.
            deadline = time.ticks_add(time.ticks_ms(), self.sock.timeout_s * 1000)
            while pid in self.inflight:
                if time.ticks_diff(time.ticks_ms(), deadline) >= 0:
                    raise OSError(-110)  # ETIMEDOUT: the session is gone
                self.wait_msg()
        return pid

    def ping(self):
        super().ping()
        self.last_tx_ms = time.ticks_ms()
