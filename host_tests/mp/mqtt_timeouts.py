# How long v2g.mqtt's connect takes against a server that accepts TCP and
# then never answers (or stops after the CONNACK): bounded by the stream's
# timeout, never for ever. argv: host port timeout_s [CA DER file: TLS].
# Prints one JSON line: the step that failed, its error, the time it took.
import json
import sys
import time

from v2g import mqtt

host, port, timeout_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ctx = mqtt.tls_context({"ca": sys.argv[4]}) if len(sys.argv) > 4 else None
c = mqtt.Client("hang-test", host, port, None, None, 30)
c.set_callback(lambda t, m: None)
step = "open_stream"
t0 = time.ticks_ms()
try:
    stream = mqtt.open_stream(host, port, timeout_s, ctx)
    step = "connect"
    c.open(stream)
    step = "subscribe"
    c.subscribe(b"hang/cmd", 1)
    step = "none"
    err = None
except OSError as e:
    err = type(e).__name__ + ": " + str(e)
print(json.dumps({"step": step, "error": err, "ms": time.ticks_diff(time.ticks_ms(), t0)}))
