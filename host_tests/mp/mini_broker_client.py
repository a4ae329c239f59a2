# test_mini_broker.py's MicroPython half: the firmware's own MQTT client
# (v2g.mqtt) against the broker on PORT: a Last Will, a retained QoS 1
# status, a QoS 1 publish and a subscription the cloud answers. One JSON
# line; it exits without DISCONNECT, so the broker sees the socket close.
#
#     micropython host_tests/mp/mini_broker_client.py PORT
import json
import sys
import time

from v2g import mqtt

PORT = int(sys.argv[1])
got = []
c = mqtt.Client(b"fw-test", "127.0.0.1", PORT, "user", "pw", 30)
c.set_callback(lambda t, m: got.append((t.decode(), m.decode())))
c.set_last_will(b"fw/status", b"offline", True, 1)
present = c.open(mqtt.open_stream("127.0.0.1", PORT, 5))
c.subscribe(b"fw/cmd", 1)
c.publish(b"fw/status", b"online", True, 1, True)
pid = c.publish(b"fw/up", b"hello", False, 1, False)  # PUBACK retired by check_msg
end = time.ticks_add(time.ticks_ms(), 5000)
while not got and time.ticks_diff(end, time.ticks_ms()) > 0:
    c.check_msg()
    time.sleep_ms(5)
print(json.dumps({"present": present, "got": got, "inflight": c.unacked(), "pid": pid}))
