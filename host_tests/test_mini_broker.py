"""tools/sim/mini_broker.py, the fallback broker of `make sim`, against real
clients: paho-mqtt (the cloud side's library), hand-written packets for what
paho will not send (garbage, oversize, unacknowledged QoS 1), and the
firmware's own MQTT client on the MicroPython unix port.

To show that something was *not* delivered without sleeping, a test publishes
a marker after it: one publisher's messages reach one subscriber in order, so
if the marker comes first, nothing came before it."""
import logging
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.client import CallbackAPIVersion, MQTTProtocolVersion

from conftest import ROOT, run_mp
from tools.sim.mini_broker import MAX_PACKET, run_in_thread

HOST = "127.0.0.1"


@pytest.fixture
def mini(caplog):
    """A broker in a thread of the test process; its internal state can be
    inspected. Fails the test if the broker logged an internal error."""
    caplog.set_level(logging.INFO, logger="mini_broker")
    broker, port, stop = run_in_thread()
    broker.test_port = port
    yield broker
    stop()
    errors = [r for r in caplog.records if r.name == "mini_broker" and r.levelno >= logging.ERROR]
    assert not errors, errors[0].getMessage()


def wait_until(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


class Peer:
    """A paho client run by its own thread, without automatic reconnection
    (a takeover test would otherwise see the two clients fight)."""

    def __init__(self, port, client_id="", clean=True, will=None, keepalive=60,
                 protocol=MQTTProtocolVersion.MQTTv311):
        self.msgs = queue.Queue()
        self.connected = threading.Event()
        self.gone = threading.Event()
        self.acks = {}  # mid -> SUBACK reason codes
        self.acked = threading.Condition()
        self.session_present = None
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                        protocol=protocol, reconnect_on_failure=False)
        c.on_connect = self._on_connect
        c.on_message = lambda _c, _u, m: self.msgs.put(m)
        c.on_disconnect = lambda *_a: self.gone.set()
        c.on_subscribe = self._on_ack
        c.on_unsubscribe = self._on_ack
        if will:
            c.will_set(*will)
        c.connect(HOST, port, keepalive)
        c.loop_start()
        self.c = c
        assert self.connected.wait(5), "no CONNACK"

    def _on_connect(self, _c, _u, flags, reason_code, _p):
        assert not reason_code.is_failure, reason_code
        self.session_present = flags.session_present
        self.connected.set()

    def _on_ack(self, _c, _u, mid, reason_codes, _p):
        with self.acked:
            self.acks[mid] = reason_codes
            self.acked.notify_all()

    def _wait_ack(self, mid):
        with self.acked:
            assert self.acked.wait_for(lambda: mid in self.acks, 5), "no SUBACK/UNSUBACK"
            return self.acks.pop(mid)

    def sub(self, *filters, qos=1):
        """Subscribe and wait for the SUBACK; returns the granted QoS (or 0x80) per filter."""
        rc, mid = self.c.subscribe([(f, qos) for f in filters])
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return [code.value for code in self._wait_ack(mid)]

    def unsub(self, *filters):
        rc, mid = self.c.unsubscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS
        self._wait_ack(mid)

    def pub(self, topic, payload, qos=0, retain=False):
        info = self.c.publish(topic, payload, qos, retain)
        if qos:
            info.wait_for_publish(5)  # returns once the PUBACK is in
            assert info.is_published()
        return info

    def get(self, timeout=5):
        try:
            return self.msgs.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError("no message arrived") from None

    def topics_until(self, marker, timeout=5):
        """Topics received up to (not including) the marker topic."""
        seen = []
        while True:
            m = self.get(timeout)
            if m.topic == marker:
                return seen
            seen.append(m.topic)

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def peers(mini):
    made = []

    def make(**kwargs):
        p = Peer(mini.test_port, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


# --- hand-made packets, for what paho does not do ---------------------------


def mqtt_str(s):
    b = s.encode() if isinstance(s, str) else s
    return len(b).to_bytes(2, "big") + b


def remaining_length(n):
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def mqtt_packet(first, body=b""):
    return bytes((first,)) + remaining_length(len(body)) + body


def connect_packet(client_id, keepalive=0, clean=True, will=None, level=4):
    flags = 0x02 if clean else 0
    tail = b""
    if will:
        topic, payload, qos = will
        flags |= 0x04 | qos << 3
        tail = mqtt_str(topic) + mqtt_str(payload)
    head = mqtt_str("MQTT") + bytes((level, flags)) + keepalive.to_bytes(2, "big")
    return mqtt_packet(0x10, head + mqtt_str(client_id) + tail)


def recv_exact(s, n):
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def recv_packet(s):
    first = recv_exact(s, 1)[0]
    n = shift = 0
    while True:
        d = recv_exact(s, 1)[0]
        n |= (d & 0x7F) << shift
        shift += 7
        if not d & 0x80:
            break
    return first, recv_exact(s, n)


def raw_client(port, client_id="raw", **kwargs):
    """A socket after a CONNECT; returns (socket, CONNACK body)."""
    s = socket.create_connection((HOST, port), 5)
    s.sendall(connect_packet(client_id, **kwargs))
    first, body = recv_packet(s)
    assert first == 0x20 and len(body) == 2
    return s, body


def closed_by_broker(s, timeout=3.0):
    s.settimeout(timeout)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    finally:
        s.close()


# --- tests -------------------------------------------------------------------


def test_retained_messages(peers):
    pub = peers()
    pub.pub("r/a", b"1", qos=1, retain=True)
    pub.pub("r/b", b"old", qos=1, retain=True)
    pub.pub("r/b", b"2", qos=1, retain=True)  # replaces "old"
    s1 = peers()
    s1.sub("r/+")
    got = sorted((m.topic, m.payload, m.retain) for m in (s1.get(), s1.get()))
    assert got == [("r/a", b"1", True), ("r/b", b"2", True)]
    # to an existing subscription the retain flag is cleared
    pub.pub("r/a", b"3", qos=1, retain=True)
    m = s1.get()
    assert (m.topic, m.payload, m.retain) == ("r/a", b"3", False)
    # an empty retained payload clears the topic (and is still delivered live)
    pub.pub("r/a", b"", qos=1, retain=True)
    assert s1.get().payload == b""
    s2 = peers()
    s2.sub("r/#", "end")
    pub.pub("end", b"")
    assert s2.topics_until("end") == ["r/b"]


def test_wildcards_and_dollar_topics(mini, peers):
    a, everything, sys_ = peers(), peers(), peers()
    assert a.sub("s/+/t", "h/#", "s/1/t", "end") == [1, 1, 1, 1]
    assert everything.sub("#", "+/x") == [1, 1]
    sys_.sub("$SYS/#", "end")
    pub = peers()
    for topic in ("s/1/t", "s/1/2/t", "h", "h/x/y", "s//t", "$SYS/x", "t/x", "end"):
        pub.pub(topic, b"", qos=1)
    # "s/1/t" matches two of a's filters but arrives once
    assert a.topics_until("end") == ["s/1/t", "h", "h/x/y", "s//t"]
    assert everything.topics_until("end") == ["s/1/t", "s/1/2/t", "h", "h/x/y", "s//t", "t/x"]
    assert sys_.topics_until("end") == ["$SYS/x"]
    # paho refuses to send an invalid filter; the broker fails just that one
    s, _ = raw_client(mini.test_port)
    s.sendall(mqtt_packet(0x82, b"\x00\x07" + mqtt_str("bad/#/x") + b"\x01" + mqtt_str("a+") + b"\x00"
                          + mqtt_str("ok/+") + b"\x02"))
    assert recv_packet(s) == (0x90, b"\x00\x07\x80\x80\x01")
    s.close()


def test_unsubscribe(peers):
    s = peers()
    s.sub("u/#", "end")
    s.unsub("u/#")
    pub = peers()
    pub.pub("u/1", b"x", qos=1)
    pub.pub("end", b"")
    assert s.topics_until("end") == []


def test_qos1_delivery_and_acks(mini, peers):
    s1, s0, s2 = peers(client_id="s1"), peers(), peers()
    assert s1.sub("q", qos=1) == [1]
    assert s0.sub("q", qos=0) == [0]
    assert s2.sub("q", qos=2) == [1]  # QoS 2 is granted as 1
    pub = peers()
    info = pub.pub("q", b"one", qos=1)  # waits for the broker's PUBACK
    assert info.rc == mqtt.MQTT_ERR_SUCCESS
    assert (s1.get().qos, s0.get().qos, s2.get().qos) == (1, 0, 1)
    # paho acknowledged: nothing is left in flight at the broker
    assert wait_until(lambda: not mini.sessions["s1"].inflight)
    pub.pub("q", b"zero", qos=0)
    assert s1.get().qos == 0  # min(publish QoS, subscription QoS)
    # a QoS 2 publish is taken in (PUBREC/PUBREL/PUBCOMP) and delivered once
    pub.pub("q", b"two", qos=2)
    m = s1.get()
    assert (m.payload, m.qos) == (b"two", 1)


def test_last_will_on_killed_socket(peers):
    watch = peers()
    watch.sub("w/#")
    dev = peers(will=("w/dev", b"offline", 1, True))
    dev.c.socket().shutdown(socket.SHUT_RDWR)  # as if the process died
    m = watch.get()
    assert (m.topic, m.payload, m.qos) == ("w/dev", b"offline", 1)
    late = peers()
    late.sub("w/#")
    m = late.get()
    assert (m.payload, m.retain) == (b"offline", True)  # the will was retained


def test_no_last_will_after_disconnect(mini, peers):
    watch = peers()
    watch.sub("w/#")
    dev = Peer(mini.test_port, client_id="polite", will=("w/dev", b"offline", 1, False))
    dev.close()
    assert wait_until(lambda: "polite" not in mini.sessions)  # the broker is done with it
    peers().pub("w/end", b"")
    assert watch.topics_until("w/end") == []


def test_keepalive_expiry(mini, peers):
    watch = peers()
    watch.sub("w/#")
    s, _ = raw_client(mini.test_port, "sleepy", keepalive=1, will=("w/sleepy", b"gone", 0))
    for _ in range(4):  # 1.6 s of pings, each within the 1.5 s allowance
        time.sleep(0.4)
        s.sendall(b"\xc0\x00")
        assert recv_packet(s) == (0xD0, b"")
    t0 = time.monotonic()
    assert closed_by_broker(s, timeout=5)
    waited = time.monotonic() - t0
    assert 1.3 < waited < 3.0, waited  # 1.5 x keepalive, plus slack for a busy machine
    assert watch.get().topic == "w/sleepy"


def test_persistent_session_queues_qos1(mini, peers):
    p = Peer(mini.test_port, client_id="persist", clean=False)
    assert p.session_present is False
    p.sub("q/#", qos=1)
    p.close()
    assert wait_until(lambda: mini.sessions["persist"].conn is None)
    pub = peers()
    pub.pub("q/1", b"a", qos=1)
    pub.pub("q/2", b"b", qos=0)  # QoS 0 is not kept for an absent client
    pub.pub("q/3", b"c", qos=1)
    p = Peer(mini.test_port, client_id="persist", clean=False)
    try:
        assert p.session_present is True
        assert [(m.topic, m.qos) for m in (p.get(), p.get())] == [("q/1", 1), ("q/3", 1)]
        pub.pub("q/end", b"", qos=1)  # the subscription survived the reconnect
        assert p.topics_until("q/end") == []
    finally:
        p.close()
    # a clean session throws the stored one away
    p = peers(client_id="persist", clean=True)
    assert p.session_present is False
    assert wait_until(lambda: not mini.sessions["persist"].subs)


def test_unacked_qos1_resent_with_dup(mini, peers):
    s, ack = raw_client(mini.test_port, "forgetful", clean=False)
    assert ack == b"\x00\x00"
    s.sendall(mqtt_packet(0x82, b"\x00\x01" + mqtt_str("d") + b"\x01"))
    assert recv_packet(s) == (0x90, b"\x00\x01\x01")
    peers().pub("d", b"payload", qos=1)
    first, body = recv_packet(s)
    assert first == 0x32  # PUBLISH, QoS 1, no DUP
    pid = body[3:5]
    s.close()  # gone without a PUBACK
    assert wait_until(lambda: mini.sessions["forgetful"].conn is None)
    s, ack = raw_client(mini.test_port, "forgetful", clean=False)
    assert ack == b"\x01\x00"  # session present
    first, body = recv_packet(s)
    assert first == 0x3A and body == mqtt_str("d") + pid + b"payload"  # DUP, same packet id
    s.sendall(mqtt_packet(0x40, pid))
    assert wait_until(lambda: not mini.sessions["forgetful"].inflight)
    s.close()


def test_client_id_takeover(mini, peers):
    watch = peers()
    watch.sub("tw/#")
    first = peers(client_id="twin", will=("tw/will", b"gone", 0, False))
    second = peers(client_id="twin")
    assert first.gone.wait(5)  # the broker closed the older connection
    assert watch.get().topic == "tw/will"  # as Mosquitto does: not a DISCONNECT
    assert not second.gone.is_set()
    second.sub("tw/echo")
    watch.pub("tw/echo", b"hi", qos=1)
    assert second.get().payload == b"hi"
    assert mini.sessions["twin"].conn is not None


def test_protocol_levels_and_client_ids(mini, peers):
    old = peers(protocol=MQTTProtocolVersion.MQTTv31, client_id="v31")
    old.sub("v")
    old.pub("v", b"3.1", qos=1)
    assert old.get().payload == b"3.1"
    s = socket.create_connection((HOST, mini.test_port), 5)
    s.sendall(connect_packet("v5", level=5))
    assert recv_packet(s) == (0x20, b"\x00\x01")  # unacceptable protocol version
    assert closed_by_broker(s)
    s = socket.create_connection((HOST, mini.test_port), 5)
    s.sendall(connect_packet("", clean=False))
    assert recv_packet(s) == (0x20, b"\x00\x02")  # identifier rejected
    assert closed_by_broker(s)
    s, ack = raw_client(mini.test_port, "", clean=True)  # the broker names it
    assert ack == b"\x00\x00"
    s.close()


def test_garbage_closes_only_that_connection(mini, peers):
    good = peers()
    good.sub("g/#")
    port = mini.test_port
    # not MQTT at all
    s = socket.create_connection((HOST, port), 5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed_by_broker(s)
    # a remaining length longer than 4 bytes
    s = socket.create_connection((HOST, port), 5)
    s.sendall(b"\x10\xff\xff\xff\xff\xff")
    assert closed_by_broker(s)
    # garbage after a good CONNECT is a protocol error: the will goes out
    s, _ = raw_client(port, "bad", will=("g/bad", b"gone", 0))
    s.sendall(b"\x00\x03abc")
    assert closed_by_broker(s)
    assert good.get().topic == "g/bad"
    # random bytes after CONNECT, with a fixed seed: whatever they parse as,
    # the broker must neither crash nor log an internal error (see `mini`)
    rnd = random.Random(1883)
    for i in range(30):
        s, _ = raw_client(port, f"fuzz{i}")
        s.sendall(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 64))))
        s.close()
    assert wait_until(lambda: not [k for k in mini.sessions if k.startswith("fuzz")])
    good.pub("g/ok", b"still here", qos=1)
    assert good.get().payload == b"still here"


def test_oversize_packet_closes_that_connection(mini, peers):
    good = peers()
    good.sub("big")
    s, _ = raw_client(mini.test_port, "huge")
    # announce a PUBLISH just over the limit; the broker must not wait for it
    s.sendall(b"\x30" + remaining_length(MAX_PACKET + 1) + mqtt_str("big"))
    assert closed_by_broker(s, timeout=2)
    # just under the limit is fine
    payload = bytes(MAX_PACKET - 100)
    good.pub("big", payload, qos=1)
    assert good.get().payload == payload


def test_cli_prints_ready_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "tools.sim.mini_broker", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert line.startswith("READY port="), line
        port = int(line.split("=")[1])
        p = Peer(port)
        p.sub("cli")
        p.pub("cli", b"x", qos=1)
        assert p.get().payload == b"x"
        p.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_firmware_client_on_unix_port(mini, peers):
    cloud = peers()
    cloud.sub("fw/#")

    def answer(_c, _u, m):  # the cloud answers the device's greeting
        cloud.msgs.put(m)
        if m.topic == "fw/up":
            cloud.c.publish("fw/cmd", b"do-it", 1)

    cloud.c.on_message = answer
    res = run_mp("mini_broker_client", mini.test_port, timeout=20).json()
    assert res == {"present": 0, "got": [["fw/cmd", "do-it"]], "inflight": 0, "pid": res["pid"]}
    seen = [(m.topic, m.payload, m.qos) for m in (cloud.get(), cloud.get(), cloud.get(), cloud.get())]
    assert seen == [("fw/status", b"online", 1), ("fw/up", b"hello", 1), ("fw/cmd", b"do-it", 1),
                    ("fw/status", b"offline", 1)]
