# The firmware's MQTT client (v2g.mqtt) in one whole session against a real
# broker, showing that it uses umqtt.simple through its public API only:
# umqtt's module and MQTTClient class hold the same objects after v2g.mqtt
# is imported and after the session (nothing patched), and the session runs
# on a copy of umqtt whose private names are hidden (host_tests/test_cloud.py
# puts one first on MICROPYPATH). Also: a payload over 4 KB is read away
# (the test runs it in a heap smaller than that payload), and a PUBLISH is
# one write.
# argv: broker port. Prints one JSON line.
import json
import sys
import time

import umqtt.simple as umqtt


def snapshot():
    return dict(umqtt.__dict__), dict(umqtt.MQTTClient.__dict__)


def changed(before):
    out = []
    for label, a, b in zip(("umqtt.simple.", "MQTTClient."), before, snapshot()):
        for k in set(a) | set(b):
            if k not in a or k not in b or a[k] is not b[k]:
                out.append(label + k)
    return sorted(out)


class Counting:
    """The stream from open_stream, counting its writes."""

    def __init__(self, s):
        self.s = s
        self.writes = 0

    @property
    def timeout_s(self):
        return self.s.timeout_s

    def write(self, buf, n=None):
        self.writes += 1
        return self.s.write(buf, n)

    def read(self, n):
        return self.s.read(n)

    def setblocking(self, flag):
        self.s.setblocking(flag)

    def settimeout(self, t):
        self.s.settimeout(t)

    def close(self):
        self.s.close()


def until(c, cond, ms=5000):
    end = time.ticks_add(time.ticks_ms(), ms)
    while not cond() and time.ticks_diff(end, time.ticks_ms()) > 0:
        c.check_msg()
        time.sleep_ms(5)
    return cond()


def session(port, res):
    got = []
    c = mqtt.Client("api-test", "127.0.0.1", port, None, None, 30)
    c.set_last_will(b"api/status", b"offline", True, 1)
    c.set_callback(lambda t, m: got.append([t.decode(), None if m is None else len(m)]))
    s = Counting(mqtt.open_stream("127.0.0.1", port, 5))
    res["present"] = c.open(s)
    res["connect_writes"] = s.writes
    n = s.writes
    c.subscribe(b"api/cmd/#", 1)  # retained there: a small and a large message
    res["subscribe_writes"] = s.writes - n
    c.publish(b"api/status", b"online", True, 1)  # returns after its PUBACK
    res["inflight_after_wait"] = c.unacked()
    n = s.writes
    pid = c.publish(b"api/up", b"hello", False, 1, False)
    res["publish_writes"] = s.writes - n
    res["inflight_before_ack"] = c.awaiting(pid)
    res["retired"] = until(c, lambda: not c.unacked())
    until(c, lambda: len(got) >= 2)
    res["got"] = sorted(got)
    t_ping = time.ticks_ms()
    time.sleep_ms(2)
    c.ping()
    res["pong"] = until(c, lambda: time.ticks_diff(c.last_rx_ms, t_ping) > 0)
    c.disconnect()


before = snapshot()
from v2g import mqtt  # noqa: E402

res = {"patched_by_import": changed(before)}
try:
    session(int(sys.argv[1]), res)
    res["error"] = None
except Exception as e:  # noqa: BLE001 - reported: the test says what failed
    res["error"] = type(e).__name__ + ": " + str(e)
res["patched_after_session"] = changed(before)
print(json.dumps(res))
