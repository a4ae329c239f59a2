# The firmware's MQTT client (v2g.mqtt) publishing far more QoS 1 packets
# (wait=False) than it reads PUBACKs for, as when a flood of commands is
# answered faster than the acknowledgements come back behind them in the
# stream. Measures the heap that costs, which ids it still tracks, and that
# a waited publish and check_msg retire what is queued.
# argv: broker port, how many. Prints one JSON line.
import gc
import json
import sys
import time

from v2g import mqtt

port, n = int(sys.argv[1]), int(sys.argv[2])
c = mqtt.Client("unacked-test", "127.0.0.1", port, None, None, 30)
c.set_callback(lambda t, m: None)
c.open(mqtt.open_stream("127.0.0.1", port, 5))
first = c.publish(b"api/flood", b"result", False, 1, False)
gc.collect()
before = gc.mem_alloc()
last = first
for _ in range(n - 1):
    last = c.publish(b"api/flood", b"result", False, 1, False)
gc.collect()
res = {"heap_growth_b": gc.mem_alloc() - before, "unacked": c.unacked(), "first_awaiting": c.awaiting(first),
       "last_awaiting": c.awaiting(last)}
waited = c.publish(b"api/flood", b"waited", False, 1)  # reads the queued PUBACKs before its own
res["waited_retired"] = not c.awaiting(waited)
end = time.ticks_add(time.ticks_ms(), 5000)
while c.unacked() and time.ticks_diff(end, time.ticks_ms()) > 0:
    c.check_msg()
res["unacked_after_drain"] = c.unacked()
c.disconnect()
print(json.dumps(res))
