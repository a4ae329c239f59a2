# test_cloud.py: the TLS handshake finds no block of heap (MemoryError from
# the stream) at a connect. It must count as a failed connect: one
# cloud_connect_failed event naming the error, a retry only after the
# backoff, and the thread's loop never sees the error. Prints JSON.
import json
import sys
import time

from v2g import cloud, config, clock as clockmod
from v2g.outbox import Outbox
from v2g.shared import Shared

tries = []


def no_heap(host, port, timeout_s, ctx=None):
    tries.append(time.ticks_ms())
    raise MemoryError("memory allocation failed, allocating 520 bytes")


cloud.open_stream = no_heap
cfg = config.load("examples/site.json")
link = cloud.CloudLink(cfg, clockmod.from_env(), Shared(), Outbox(sys.argv[1], 8), None)
escaped = None
t_end = time.ticks_add(time.ticks_ms(), 400)
while time.ticks_diff(t_end, time.ticks_ms()) > 0:
    try:
        link.step()
    except Exception as e:  # what run() would report as cloud_error every 20 ms
        escaped = repr(e)
        break
    time.sleep_ms(20)
events = [json.loads(t) for t in link.pending_events]
print(json.dumps({"tries": len(tries), "escaped": escaped, "connected": link.connected,
                  "events": [(e["ev"], e.get("error"), e.get("retry_in_ms")) for e in events]}))
