"""A small MQTT 3.1.1 broker on asyncio, for the simulator on loopback.

`make sim` must work on a machine without Mosquitto, so this broker does what
the firmware and the cloud side rely on, and no more: QoS 0 and 1, retained
messages, Last Will, keepalive, persistent sessions (in memory), `+`/`#`
wildcards. QoS 2 publishes from clients are accepted (PUBREC/PUBREL/PUBCOMP)
but subscriptions are granted at most QoS 1, so the broker never sends QoS 2.
There is no authentication, no TLS and nothing is written to disk.

Usage from Python:

    broker = MiniBroker(port=0)
    port = await broker.start()
    ...
    await broker.stop()

or from a thread-based program: `broker, port, stop = run_in_thread()`.
From a shell: `python -m tools.sim.mini_broker --port 1883` prints
`READY port=P` once listening and serves until SIGTERM/SIGINT.
"""
import argparse
import asyncio
import collections
import itertools
import logging
import signal
import sys
import threading

log = logging.getLogger("mini_broker")

MAX_PACKET = 256 * 1024  # remaining length above this closes the connection
MAX_INFLIGHT = 100  # unacknowledged QoS 1 messages per session ...
MAX_QUEUED = 1000  # ... and behind them, or while offline; oldest dropped
MAX_WRITE_BUFFER = 4 * 1024 * 1024  # a client this far behind is cut off
CONNECT_TIMEOUT = 10.0  # a socket must send CONNECT within this time

# control packet types (high nibble of the fixed header)
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = range(1, 8)
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = range(8, 15)

# CONNACK return codes
ACCEPTED, BAD_PROTOCOL, BAD_CLIENT_ID = 0, 1, 2

Message = collections.namedtuple("Message", "topic payload qos retain")


class ProtocolError(Exception):
    """The peer broke the protocol: close its connection (and send its will)."""


# --- wire format -----------------------------------------------------------


def encode_length(n):
    out = bytearray()
    while True:
        digit, n = n & 0x7F, n >> 7
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def packet(first_byte, body=b""):
    return bytes((first_byte,)) + encode_length(len(body)) + body


def encode_str(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


async def read_packet(reader, max_size, expect=None):
    """One control packet from the stream: (first byte, body). With expect,
    any other packet type fails at its first byte, so a stray protocol
    (an HTTP request, say) is refused at once, not after waiting for the
    length its bytes seem to announce."""
    first = (await reader.readexactly(1))[0]
    if expect is not None and first >> 4 != expect:
        raise ProtocolError(f"expected packet type {expect}, got {first >> 4}")
    length = 0
    for shift in range(0, 28, 7):
        digit = (await reader.readexactly(1))[0]
        length |= (digit & 0x7F) << shift
        if not digit & 0x80:
            break
    else:
        raise ProtocolError("remaining length longer than 4 bytes")
    if length > max_size:
        # Refuse before reading: the body is never buffered.
        raise ProtocolError(f"packet of {length} bytes exceeds {max_size}")
    return first, await reader.readexactly(length)


class Body:
    """A cursor over a packet body; any overrun is a protocol error."""

    def __init__(self, data):
        self.data = data
        self.pos = 0

    def take(self, n):
        if self.pos + n > len(self.data):
            raise ProtocolError("packet shorter than its fields")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return int.from_bytes(self.take(2), "big")

    def binary(self):
        return self.take(self.u16())

    def text(self):
        raw = self.binary()
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("string is not UTF-8") from None
        if "\0" in s:
            raise ProtocolError("string contains U+0000")
        return s

    def rest(self):
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def more(self):
        return self.pos < len(self.data)

    def end(self):
        if self.more():
            raise ProtocolError("trailing bytes in packet")


# --- topics ----------------------------------------------------------------


def valid_topic(topic):
    return bool(topic) and "+" not in topic and "#" not in topic


def valid_filter(filt):
    if not filt:
        return False
    levels = filt.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


def topic_matches(filt, topic):
    # $-topics (e.g. $SYS) are for the server; a filter must name the first
    # level explicitly to see them (MQTT 3.1.1, 4.7.2).
    if topic.startswith("$") and filt[:1] in ("+", "#"):
        return False
    f_levels = filt.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True  # also matches the parent: "a/#" matches "a"
        if i >= len(t_levels) or (level != "+" and level != t_levels[i]):
            return False
    return len(f_levels) == len(t_levels)


# --- sessions and connections ----------------------------------------------


class Session:
    """What the broker keeps for a client id: subscriptions and QoS 1 state.
    A clean session lives as long as its connection; a persistent one
    (clean_session=0) also while the client is away."""

    def __init__(self, client_id, clean):
        self.client_id = client_id
        self.clean = clean
        self.subs = {}  # filter -> granted QoS
        self.conn = None
        self.inflight = collections.OrderedDict()  # packet id -> Message, sent, no PUBACK yet
        self.queue = collections.deque()  # Messages waiting for a connection or inflight room
        self.dropped = 0
        self._pids = itertools.cycle(range(1, 65536))

    def granted_qos(self, topic):
        """The highest QoS among this session's matching subscriptions, or
        None: overlapping subscriptions give one copy, not several."""
        best = None
        for filt, qos in self.subs.items():
            if topic_matches(filt, topic) and (best is None or qos > best):
                best = qos
        return best

    def deliver(self, msg):
        if msg.qos == 0:
            # QoS 0 is fire and forget: not kept for an absent client.
            if self.conn:
                self.conn.send_publish(msg, 0)
            return
        if self.conn and len(self.inflight) < MAX_INFLIGHT and not self.queue:
            self._send_qos1(msg)
            return
        if len(self.queue) >= MAX_QUEUED:
            # Keep the newest: for a charger the latest command or state matters.
            self.queue.popleft()
            self.dropped += 1
            log.warning("session %s: queue full, dropped the oldest message", self.client_id)
        self.queue.append(msg)

    def _send_qos1(self, msg):
        pid = next(self._pids)
        while pid in self.inflight:  # 65535 in flight cannot happen (MAX_INFLIGHT)
            pid = next(self._pids)
        self.inflight[pid] = msg
        self.conn.send_publish(msg, pid)

    def acked(self, pid):
        self.inflight.pop(pid, None)
        self.pump()

    def pump(self):
        while self.conn and self.queue and len(self.inflight) < MAX_INFLIGHT:
            self._send_qos1(self.queue.popleft())

    def resume(self):
        """A client took this session up again: resend what it never
        acknowledged (same packet ids, DUP set), then what waited."""
        for pid, msg in self.inflight.items():
            self.conn.send_publish(msg, pid, dup=True)
        self.pump()


class Connection:
    """One client socket, from CONNECT to close."""

    def __init__(self, broker, reader, writer):
        self.broker = broker
        self.reader = reader
        self.writer = writer
        self.session = None
        self.client_id = None
        self.will = None  # Message, published unless the client says DISCONNECT
        self.keepalive = 0
        self.qos2_received = set()  # packet ids between PUBREC and PUBREL
        self.closed = False
        peer = writer.get_extra_info("peername")
        self.name = f"{peer[0]}:{peer[1]}" if peer else "?"

    # -- output

    def send(self, data):
        if self.closed or self.writer.transport.is_closing():
            return  # the peer is gone; run() is about to notice
        self.writer.write(data)
        # We never await drain(), so that a publisher is not slowed down by
        # its slowest subscriber; instead a subscriber too far behind is cut.
        if self.writer.transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.warning("%s: not reading, closing", self.name)
            self.abort()

    def send_publish(self, msg, pid, dup=False):
        first = (PUBLISH << 4) | (0x08 if dup else 0) | (msg.qos << 1) | (1 if msg.retain else 0)
        body = encode_str(msg.topic)
        if msg.qos:
            body += pid.to_bytes(2, "big")
        self.send(packet(first, body + msg.payload))

    def abort(self):
        """Drop the socket; run() then ends and publishes the will."""
        self.closed = True
        self.writer.transport.abort()

    # -- lifecycle

    async def run(self):
        try:
            first, body = await asyncio.wait_for(
                read_packet(self.reader, self.broker.max_packet, CONNECT), CONNECT_TIMEOUT)
            if not self.on_connect(first, Body(body)):
                return
            while True:
                # Keepalive: the client must send something within 1.5 times
                # its keepalive (MQTT 3.1.1, 3.1.2.10), or it is gone.
                timeout = self.keepalive * 1.5 if self.keepalive else None
                first, body = await asyncio.wait_for(
                    read_packet(self.reader, self.broker.max_packet), timeout)
                if self.closed:
                    break  # taken over or cut off; bytes still buffered are moot
                if not self.dispatch(first, Body(body)):
                    break  # DISCONNECT
        except asyncio.TimeoutError:
            log.info("%s (%s): keepalive/connect timeout", self.name, self.client_id)
        except ProtocolError as e:
            log.info("%s (%s): protocol error: %s", self.name, self.client_id, e)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the socket closed or failed: an abnormal disconnect
        except asyncio.CancelledError:
            self.will = None  # the broker is stopping: no wills, no flushing
            self.abort()
            raise
        except Exception:
            # A bug here must cost one connection, not the broker.
            log.exception("%s (%s): internal error", self.name, self.client_id)
        finally:
            self.finish()

    def finish(self):
        self.publish_will()
        self.detach()
        if not self.closed:
            self.closed = True
            self.writer.close()  # unlike abort(), sends a last CONNACK still buffered

    def publish_will(self):
        will, self.will = self.will, None
        if will is not None:
            log.info("%s: publishing will on %s", self.client_id, will.topic)
            self.broker.publish(will)

    def detach(self):
        session, self.session = self.session, None
        if session is None or session.conn is not self:
            return
        session.conn = None
        if session.clean and self.broker.sessions.get(session.client_id) is session:
            del self.broker.sessions[session.client_id]

    def take_over(self):
        """Another connection claims our client id (MQTT 3.1.1, 3.1.4-2).
        Done at once, not when our task next runs, so that our will is
        published before the new connection can publish anything."""
        log.info("%s: client id %s taken over", self.name, self.client_id)
        self.publish_will()
        self.detach()
        self.abort()

    # -- incoming packets

    def on_connect(self, first, body):
        if first & 0x0F:
            raise ProtocolError("CONNECT flags must be 0")
        proto, level = body.text(), body.u8()
        if (proto, level) not in (("MQTT", 4), ("MQIsdp", 3)):
            self.send(packet(CONNACK << 4, bytes((0, BAD_PROTOCOL))))
            log.info("%s: unsupported protocol %r level %d", self.name, proto, level)
            return False
        flags = body.u8()
        clean = bool(flags & 0x02)
        has_will = bool(flags & 0x04)
        will_qos = (flags >> 3) & 3
        will_retain = bool(flags & 0x20)
        if flags & 0x01:
            raise ProtocolError("reserved CONNECT flag set")
        if will_qos == 3 or (not has_will and (will_qos or will_retain)):
            raise ProtocolError("bad will flags")
        if flags & 0x40 and not flags & 0x80:
            raise ProtocolError("password without user name")
        self.keepalive = body.u16()
        client_id = body.text()
        will = None
        if has_will:
            topic, payload = body.text(), body.binary()
            if not valid_topic(topic):
                raise ProtocolError("bad will topic")
            will = Message(topic, payload, will_qos, will_retain)
        if flags & 0x80:
            body.text()  # user name: accepted, not checked
        if flags & 0x40:
            body.binary()  # password: likewise
        body.end()
        if not client_id:
            if not clean:
                # A persistent session needs a name to be found again.
                self.send(packet(CONNACK << 4, bytes((0, BAD_CLIENT_ID))))
                return False
            client_id = self.broker.new_client_id()
        self.client_id = client_id
        self.will = will
        self.session, present = self.broker.attach(self, client_id, clean)
        self.send(packet(CONNACK << 4, bytes((1 if present else 0, ACCEPTED))))
        log.info("%s: connected as %s (clean=%d, keepalive=%d)", self.name, client_id, clean, self.keepalive)
        if present:
            self.session.resume()
        return True

    def dispatch(self, first, body):
        """Handle one packet after CONNECT; False means DISCONNECT."""
        kind, flags = first >> 4, first & 0x0F
        # Fixed-header flags are fixed for every type but PUBLISH (2.2.2).
        expected = 0x02 if kind in (PUBREL, SUBSCRIBE, UNSUBSCRIBE) else 0
        if kind != PUBLISH and flags != expected:
            raise ProtocolError(f"bad flags {flags:#x} for packet type {kind}")
        if kind == PUBLISH:
            self.on_publish(flags, body)
        elif kind == PUBACK:
            pid = body.u16()
            body.end()
            self.session.acked(pid)
        elif kind == PUBREL:
            pid = body.u16()
            body.end()
            self.qos2_received.discard(pid)
            self.send(packet(PUBCOMP << 4, pid.to_bytes(2, "big")))
        elif kind == SUBSCRIBE:
            self.on_subscribe(body)
        elif kind == UNSUBSCRIBE:
            self.on_unsubscribe(body)
        elif kind == PINGREQ:
            body.end()
            self.send(packet(PINGRESP << 4))
        elif kind == DISCONNECT:
            body.end()
            self.will = None  # a clean goodbye: the will is discarded
            return False
        else:
            # CONNECT again, or a packet only a server sends, or type 0/15;
            # PUBREC/PUBCOMP too, as this broker never sends QoS 2.
            raise ProtocolError(f"unexpected packet type {kind}")
        return True

    def on_publish(self, flags, body):
        qos, retain = (flags >> 1) & 3, bool(flags & 1)
        if qos == 3:
            raise ProtocolError("PUBLISH with QoS 3")
        topic = body.text()
        if not valid_topic(topic):
            raise ProtocolError(f"bad topic name {topic!r}")
        pid = body.u16() if qos else 0
        if qos and not pid:
            raise ProtocolError("packet id 0")
        msg = Message(topic, body.rest(), qos, retain)
        if qos == 2:
            # Deliver on the first copy only; resends until PUBREL are
            # duplicates of the same message.
            if pid not in self.qos2_received:
                self.qos2_received.add(pid)
                self.broker.publish(msg)
            self.send(packet(PUBREC << 4, pid.to_bytes(2, "big")))
            return
        self.broker.publish(msg)
        if qos == 1:
            self.send(packet(PUBACK << 4, pid.to_bytes(2, "big")))

    def on_subscribe(self, body):
        pid = body.u16()
        requests = []
        while body.more():
            filt, qos = body.text(), body.u8()
            if qos > 2:
                raise ProtocolError("SUBSCRIBE with QoS > 2")
            requests.append((filt, qos))
        if not requests:
            raise ProtocolError("SUBSCRIBE without topic filters")
        codes = bytearray()
        granted = []
        for filt, qos in requests:
            if not valid_filter(filt):
                codes.append(0x80)  # failure for this filter only
                continue
            qos = min(qos, 1)
            self.session.subs[filt] = qos
            codes.append(qos)
            granted.append((filt, qos))
        self.send(packet(SUBACK << 4, pid.to_bytes(2, "big") + bytes(codes)))
        # Retained messages go out after the SUBACK, also on a repeated
        # subscription (3.3.1.3), with the retain flag set.
        for filt, qos in granted:
            for msg in list(self.broker.retained.values()):
                if topic_matches(filt, msg.topic):
                    self.session.deliver(msg._replace(qos=min(msg.qos, qos)))

    def on_unsubscribe(self, body):
        pid = body.u16()
        filters = []
        while body.more():
            filters.append(body.text())
        if not filters:
            raise ProtocolError("UNSUBSCRIBE without topic filters")
        for filt in filters:
            self.session.subs.pop(filt, None)
        self.send(packet(UNSUBACK << 4, pid.to_bytes(2, "big")))


# --- the broker ------------------------------------------------------------


class MiniBroker:
    def __init__(self, host="127.0.0.1", port=0, max_packet=MAX_PACKET):
        self.host = host
        self.port = port
        self.max_packet = max_packet
        self.sessions = {}  # client id -> Session
        self.retained = {}  # topic -> Message
        self.server = None
        self._tasks = set()
        self._ids = itertools.count(1)

    async def start(self):
        """Listen; returns the port (useful with port=0)."""
        self.server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("listening on %s:%d", self.host, self.port)
        return self.port

    async def stop(self):
        """Close the listener and every connection (no wills are sent)."""
        if self.server is None:
            return
        self.server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.server.wait_closed()
        self.server = None

    async def _serve(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await Connection(self, reader, writer).run()
        finally:
            self._tasks.discard(task)

    def new_client_id(self):
        while True:
            cid = f"mini-broker-auto-{next(self._ids)}"
            if cid not in self.sessions:
                return cid

    def attach(self, conn, client_id, clean):
        """Bind a new connection to its session: (session, session_present)."""
        old = self.sessions.get(client_id)
        if old is not None and old.conn is not None:
            old.conn.take_over()
            old = self.sessions.get(client_id)  # gone if it was a clean one
        if old is not None and not clean:
            old.conn = conn
            return old, True
        session = Session(client_id, clean)  # replaces any old one
        session.conn = conn
        self.sessions[client_id] = session
        return session, False

    def publish(self, msg):
        """Route one message from a client (or a will) to the subscribers."""
        if msg.retain:
            if msg.payload:
                self.retained[msg.topic] = msg
            else:
                self.retained.pop(msg.topic, None)  # an empty retained message clears
        for session in list(self.sessions.values()):
            qos = session.granted_qos(msg.topic)
            if qos is not None:
                # Live subscribers get the retain flag cleared (3.3.1.3).
                session.deliver(Message(msg.topic, msg.payload, min(msg.qos, qos), False))


# --- running it ------------------------------------------------------------


def run_in_thread(port=0, host="127.0.0.1"):
    """Start a broker on its own event loop in a daemon thread, for programs
    and tests that are not asyncio: returns (broker, port, stop_fn)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="mini-broker", daemon=True)
    thread.start()
    broker = MiniBroker(host, port)
    try:
        port = asyncio.run_coroutine_threadsafe(broker.start(), loop).result(10)
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        raise
    stopped = []

    def stop():
        if stopped:
            return
        stopped.append(True)
        asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()

    return broker, port, stop


async def _serve_forever(host, port):
    broker = MiniBroker(host, port)
    port = await broker.start()
    print(f"READY port={port}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await broker.stop()


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tools.sim.mini_broker", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883, help="0 picks a free port (printed)")
    ap.add_argument("-v", "--verbose", action="count", default=0)
    args = ap.parse_args(argv)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, stream=sys.stderr, format="mini_broker: %(message)s")
    asyncio.run(_serve_forever(args.host, args.port))


if __name__ == "__main__":
    main()
