# MQTT session on micropython-lib's umqtt.simple, used through its public API
# only, made safe for a device that must never hang on the network.
#
# Which umqtt: 1.3.4 in CI (the newest on PyPI, from 2017; fetched by
# tools/setup_env.sh) and the newer one frozen in ESP32 images or installed
# by mip on a Pico W. Their public APIs differ where it matters here:
#  - 1.3.4's connect() opens its own socket with no timeout and takes TLS as
#    ssl=True plus ssl_params for ussl.wrap_socket; 1.4.0 takes an SSLContext
#    (ssl=ctx, wrapped with server_hostname); only later ones have
#    connect(clean_session, timeout). Newer releases are published on
#    micropython-lib's own mip index, not on PyPI, so CI cannot pin one.
#  - in every version wait_msg() reads a payload whole into RAM and calls
#    sock.setblocking(True), which on a real socket drops its timeout; and
#    publish(qos=1) waits for its PUBACK, running the command callback
#    meanwhile (a flood of commands would pile up results in RAM).
# So Client subclasses MQTTClient and overrides public methods only, with the
# same meaning and wire format, working on a stream this module opens:
#  - connect()/open(): the TCP (and TLS) stream is opened here with a timeout
#    (open_stream), our CONNECT is one write on it, the CONNACK read is bound
#    by that timeout; a refusal is an OSError (the cloud link backs off and
#    retries; umqtt's MQTTException would bypass that);
#  - subscribe(): one write, waits (bounded) for its SUBACK;
#  - wait_msg(): reads every packet whole, payloads over max_payload read
#    away in small pieces and never allocated, PUBACKs retired, and notes
#    when anything arrived (keepalive);
#  - publish(): one write per packet (several small writes meet Nagle's
#    algorithm and delayed ACKs, and cost a TLS record each); QoS 1 may
#    return before its PUBACK (wait=False);
#  - set_last_will()/set_callback(): umqtt's (its checks), plus our copy.
# (Base methods are called as MQTTClient.f(self, ...): super() would make
# each such method a closure, 160 bytes more heap at import.)
# umqtt's own ping(), check_msg() and disconnect() run unchanged. The only
# thing they need from us is the attribute every version's methods work on:
# `sock`, here a _Stream (timeout kept across setblocking, settimeout on TLS
# too). Nothing in umqtt's module or class is replaced, and no member of
# umqtt whose name starts with "_" is used (host_tests/test_cloud.py checks
# both, against a copy of umqtt with its private names hidden).
import socket
import time

from umqtt.simple import MQTTClient

_DISCARD_CHUNK = const(256)
PKT_MIN = const(512)  # a telemetry record or state fits; grown for more
_ETIMEDOUT = const(110)
# QoS 1 packet ids tracked until their PUBACK: the latest this many. More
# than the cloud link keeps results to re-send (16), so an id it still asks
# about is never one forgotten; a fixed list, because a flood of commands
# answered faster than the PUBACKs come back (they queue behind the
# commands in the stream) grew a dict to 900 ids and 14 KB (MemoryError).
UNACKED_MAX = const(32)


class TlsError(OSError):
    pass


class BrokerClosed(OSError):
    """The broker closed the session (end of stream): among other reasons
    because another client connected with the same client id."""


class _Stream:
    """A connected (TLS) socket with a timeout that stays: every blocking
    read returns the bytes asked for, b"" at the end of the stream, or
    raises ETIMEDOUT after timeout_s (a TLS read that times out would
    return None or a short piece)."""

    def __init__(self, sock, raw, timeout_s):
        self.s = sock
        self.raw = raw
        self.timeout_s = timeout_s
        self.blocking = True

    def read(self, n):
        t0 = time.ticks_ms()
        got = self.s.read(n)
        if not self.blocking or (got is not None and (len(got) == n or not got)):
            return got
        buf = got or b""
        while len(buf) < n:
            if time.ticks_diff(time.ticks_ms(), t0) >= self.timeout_s * 1000:
                raise OSError(_ETIMEDOUT)
            more = self.s.read(n - len(buf))
            if more == b"":
                break  # end of stream: the short read tells the caller
            if more:
                buf += more
        return buf

    def write(self, buf, n=None):
        if n is not None:
            buf = memoryview(buf)[:n]
        return self.s.write(buf)

    def settimeout(self, timeout_s):
        """For every later blocking read and write, and a publish's wait
        for its PUBACK."""
        self.timeout_s = timeout_s
        if self.blocking:
            self.raw.settimeout(timeout_s)

    def setblocking(self, flag):
        # umqtt's check_msg() reads the first byte without blocking, then
        # sets blocking again: that restores the timeout, never "for ever"
        self.blocking = flag
        self.raw.settimeout(self.timeout_s if flag else 0)

    def close(self):
        try:
            self.s.close()
        finally:
            if self.raw is not self.s:
                try:
                    self.raw.close()
                except OSError:
                    pass


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


def _put_str(pkt, i, s):
    """A length-prefixed MQTT string at pkt[i:]; -> the index after it."""
    pkt[i] = len(s) >> 8
    pkt[i + 1] = len(s) & 0xFF
    pkt[i + 2 : i + 2 + len(s)] = s
    return i + 2 + len(s)


class Client(MQTTClient):
    max_payload = 4096

    def __init__(self, client_id, server, port, user=None, password=None, keepalive=0, pkt=None, ctx=None):
        # the call form every umqtt.simple version accepts
        MQTTClient.__init__(self, client_id, server, port, user, password, keepalive)
        # what our CONNECT needs, kept here: umqtt's own fields are its own
        # (and the will: (topic, msg, retain, qos) from set_last_will)
        self._conn = [server, port, ctx, client_id, user, password, keepalive, None]
        self._on_msg = None
        self._pid = 0  # our packet ids (PUBLISH, SUBSCRIBE)
        self._suback = 0  # the last SUBACK: pid << 8 | return code
        self.last_rx_ms = time.ticks_ms()
        self.last_tx_ms = self.last_rx_ms
        self._unacked = [0] * UNACKED_MAX  # packet ids without PUBACK; 0: free
        self._unacked_i = 0  # the slot the next id takes (the oldest)
        self._wait_pid = 0  # the one publish(wait=True) waits for: never pushed out
        # one packet buffer, not a fresh one per publish (several a second):
        # that fragments a small heap. The caller may lend one made at boot.
        self._pkt = bytearray(PKT_MIN) if pkt is None else pkt

    def renew(self):
        """Back to a new session's state for the next open(). The cloud link
        keeps one client for every reconnect: a new one each time is a
        464-byte attribute table (64-bit port) wanted when a day of running
        has left the heap in pieces, and at 104 KB that was what failed."""
        self.sock = None
        u = self._unacked
        for i in range(len(u)):
            u[i] = 0
        self._unacked_i = 0
        self._wait_pid = 0
        self._suback = 0
        self.last_rx_ms = self.last_tx_ms = time.ticks_ms()

    def awaiting(self, pid):
        """Whether QoS 1 packet pid is still waiting for its PUBACK (False
        once retired, once UNACKED_MAX later ones pushed it out, or for None)."""
        return pid != 0 and (pid == self._wait_pid or pid in self._unacked)

    def unacked(self):
        """-> how many tracked QoS 1 packets wait for their PUBACK."""
        return UNACKED_MAX - self._unacked.count(0) + (1 if self._wait_pid else 0)

    def set_last_will(self, topic, msg, retain=False, qos=0):
        MQTTClient.set_last_will(self, topic, msg, retain, qos)
        self._conn[7] = (topic, msg, retain, qos)

    def set_callback(self, f):
        MQTTClient.set_callback(self, f)
        self._on_msg = f

    def _head(self, first, sz):
        """The packet buffer (grown if need be) with the fixed header of a
        packet of sz bytes after it; -> the index after that header."""
        if len(self._pkt) < 5 + sz:
            self._pkt = bytearray((5 + sz + 255) & ~255)
        pkt = self._pkt
        pkt[0] = first
        i = 1
        while sz > 0x7F:
            pkt[i] = (sz & 0x7F) | 0x80
            sz >>= 7
            i += 1
        pkt[i] = sz
        return i + 1

    def connect(self, clean_session=True, timeout=5):
        """umqtt's signature (newer versions'), on a stream opened here:
        TLS when the Client was given ctx, never plain TCP instead."""
        c = self._conn
        return self.open(open_stream(c[0], c[1], timeout, c[2]), clean_session)

    def open(self, stream, clean_session=True):
        """CONNECT on a stream from open_stream (closed if this fails);
        -> whether the broker had a session for us (CONNACK's flag). A
        refusal is an OSError: the cloud link retries after its backoff."""
        self.sock = stream
        try:
            _, _, _, cid, user, pswd, keepalive, w = self._conn
            cid = cid.encode() if isinstance(cid, str) else cid
            user = user.encode() if isinstance(user, str) else user
            pswd = pswd.encode() if isinstance(pswd, str) else pswd
            flags = 2 if clean_session else 0
            sz = 12 + len(cid)
            if w:
                sz += 4 + len(w[0]) + len(w[1])
                flags |= 4 | w[3] << 3 | (0x20 if w[2] else 0)
            if user is not None:
                sz += 2 + len(user)
                flags |= 0x80
                if pswd is not None:
                    sz += 2 + len(pswd)
                    flags |= 0x40
            i = self._head(0x10, sz)
            pkt = self._pkt
            pkt[i : i + 10] = b"\0\4MQTT\4\0\0\0"
            pkt[i + 7] = flags
            pkt[i + 8] = keepalive >> 8
            pkt[i + 9] = keepalive & 0xFF
            i = _put_str(pkt, i + 10, cid)
            if w:
                i = _put_str(pkt, _put_str(pkt, i, w[0]), w[1])
            if flags & 0x80:
                i = _put_str(pkt, i, user)
            if flags & 0x40:
                i = _put_str(pkt, i, pswd)
            stream.write(pkt, i)
            resp = self._take(4)
            if resp[0] != 0x20 or resp[1] != 2:
                raise OSError(-2)  # not a CONNACK: protocol error
            if resp[3]:
                raise OSError("CONNACK refused: %d" % resp[3])
        except Exception:
            stream.close()
            raise
        self.last_rx_ms = self.last_tx_ms = time.ticks_ms()
        return resp[2] & 1

    def _take(self, n):
        b = self.sock.read(n)
        if len(b) != n:
            raise BrokerClosed("closed by the broker")
        return b

    def subscribe(self, topic, qos=0):
        """One write; waits (bounded by the stream's timeout) for the SUBACK,
        delivering what arrives meanwhile. A refusal is an OSError."""
        pid = self._pid = self._pid % 65535 + 1
        i = self._head(0x82, 5 + len(topic))
        pkt = self._pkt
        pkt[i] = pid >> 8
        pkt[i + 1] = pid & 0xFF
        i = _put_str(pkt, i + 2, topic)
        pkt[i] = qos
        self._suback = 0
        self.sock.write(pkt, i + 1)
        self.last_tx_ms = time.ticks_ms()
        deadline = time.ticks_add(self.last_tx_ms, self.sock.timeout_s * 1000)
        while self._suback >> 8 != pid:
            if time.ticks_diff(time.ticks_ms(), deadline) >= 0:
                raise OSError(_ETIMEDOUT)
            self.wait_msg()
        if self._suback & 0x80:
            raise OSError("SUBACK refused")

    def wait_msg(self):
        """One packet, read whole; None when nothing was waiting (after
        umqtt's check_msg) or for a PINGRESP/PUBACK, else its type byte."""
        res = self.sock.read(1)
        self.sock.setblocking(True)
        if res is None:
            return None
        if res == b"":
            raise BrokerClosed("closed by the broker")
        self.last_rx_ms = time.ticks_ms()
        op = res[0]
        if op == 0xD0:  # PINGRESP
            if self._take(1) != b"\0":
                raise OSError(-2)
            return None
        if op == 0x40:  # PUBACK: ours to account for
            b = self._take(3)
            if b[0] != 2:
                raise OSError(-2)
            u = self._unacked
            pid = (b[1] << 8) | b[2]
            if pid == self._wait_pid:
                self._wait_pid = 0
            elif pid and pid in u:
                u[u.index(pid)] = 0
            return None
        sz = sh = 0
        while True:  # remaining length
            b = self._take(1)[0]
            sz |= (b & 0x7F) << sh
            if not b & 0x80:
                break
            sh += 7
            if sh > 21:
                raise OSError(-2)
        if op == 0x90:  # SUBACK: for subscribe()
            if sz != 3:
                raise OSError(-2)
            b = self._take(3)
            self._suback = (b[0] << 16) | (b[1] << 8) | b[2]
            return op
        msg = None
        if op & 0xF0 == 0x30:  # PUBLISH
            b = self._take(2)
            topic_len = (b[0] << 8) | b[1]
            if topic_len + 2 > sz or topic_len > 256 or op & 6 == 6:
                raise OSError(-3)  # protocol error: drop the connection
            topic = self._take(topic_len)
            sz -= topic_len + 2
            pid = 0
            if op & 6:
                b = self._take(2)
                pid = (b[0] << 8) | b[1]
                sz -= 2
            if op & 6 == 4:
                raise OSError(-5)  # QoS 2 is not used here
            if sz <= self.max_payload:
                msg = self._take(sz) if sz else b""
                sz = 0
        # what is left: a payload too large for the heap, or a packet that
        # is not expected here: read away in small pieces, never whole
        while sz > 0:
            n = min(sz, _DISCARD_CHUNK)
            self._take(n)
            sz -= n
        if op & 0xF0 != 0x30:
            return op
        self._on_msg(topic, msg)
        if pid:
            pkt = self._pkt
            pkt[0] = 0x40
            pkt[1] = 2
            pkt[2] = pid >> 8
            pkt[3] = pid & 0xFF
            self.sock.write(pkt, 4)
        return op

    def publish(self, topic, msg, retain=False, qos=0, wait=True):
        """umqtt's publish, but a QoS 1 publish can return before its
        PUBACK (wait=False); wait_msg() retires the PUBACKs. -> the packet
        id (0 for QoS 0)."""
        pid = 0
        sz = 2 + len(topic) + len(msg)
        if qos:
            pid = self._pid = self._pid % 65535 + 1
            sz += 2
        i = _put_str(self._pkt, self._head(0x30 | qos << 1 | (1 if retain else 0), sz), topic)
        pkt = self._pkt
        if qos:
            pkt[i] = pid >> 8
            pkt[i + 1] = pid & 0xFF
            i += 2
            if wait:
                self._wait_pid = pid
            else:
                self._unacked[self._unacked_i] = pid
                self._unacked_i = (self._unacked_i + 1) % UNACKED_MAX
        pkt[i : i + len(msg)] = msg
        self.sock.write(pkt, i + len(msg))
        self.last_tx_ms = time.ticks_ms()
        if qos and wait:
            # a broker that sends other packets but never this PUBACK must
            # not keep us here: the stream's timeout bounds the whole wait
            deadline = time.ticks_add(self.last_tx_ms, self.sock.timeout_s * 1000)
            while self.awaiting(pid):
                if time.ticks_diff(time.ticks_ms(), deadline) >= 0:
                    raise OSError(_ETIMEDOUT)  # the session is gone
                self.wait_msg()
        return pid

    def ping(self):
        MQTTClient.ping(self)
        self.last_tx_ms = time.ticks_ms()
