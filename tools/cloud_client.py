"""The cloud side of the MQTT interface, for integrators and tests.

    python -m tools.cloud_client --host 127.0.0.1 --device home-charger-01 \\
        --key <64 hex> dispatch '{"ev_w": -5000, "until": 1781460000}'

Signs a command exactly as the firmware expects (CONTRACT section 4):
payload = {"body": "<JSON text>", "sig": hex(HMAC-SHA256(key, body as UTF-8))},
publishes it on v2g/1/<device>/cmd with QoS 1 and waits for cmd/result.
"""
import argparse
import hashlib
import hmac
import json
import sys
import threading
import time
import uuid


def sign(key_hex, body_text):
    return hmac.new(bytes.fromhex(key_hex), body_text.encode(), hashlib.sha256).hexdigest()


def command(key_hex, op, args, seq, exp, cid=None):
    """The MQTT payload (bytes) of one signed command."""
    body = json.dumps({"id": cid or str(uuid.uuid4()), "seq": seq, "exp": exp, "op": op, "args": args})
    return json.dumps({"body": body, "sig": sign(key_hex, body)}).encode()


class Cloud:
    """A paho-mqtt client subscribed to one device's topics; keeps what it saw."""

    def __init__(self, host, port, device_id, tls_ca_pem=None, client_id=None):
        """client_id given: a persistent session (clean_session False), so
        the broker keeps QoS 1 messages while this client is away."""
        import paho.mqtt.client as mqtt

        self.root = f"v2g/1/{device_id}/"
        self.msgs = []
        self.cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"cloud-{uuid.uuid4().hex[:8]}",
                             clean_session=client_id is None)
        if tls_ca_pem:
            self.c.tls_set(ca_certs=tls_ca_pem)
        self.c.on_message = self._on_message
        self.c.connect(host, port, 30)
        self.c.subscribe(self.root + "#", qos=1)
        self.c.loop_start()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.msgs.append((msg.topic[len(self.root):], msg.payload, msg.retain))
            self.cond.notify_all()

    def topic(self, name):
        with self.cond:
            return [p for t, p, _ in self.msgs if t == name]

    def json(self, name):
        out = []
        for p in self.topic(name):
            try:
                out.append(json.loads(p))
            except ValueError:
                pass
        return out

    def wait(self, pred, timeout=10.0):
        """Wait until pred(self) is truthy; returns its value (or None)."""
        end = time.time() + timeout
        with self.cond:
            while True:
                v = pred(self)
                if v:
                    return v
                left = end - time.time()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def send(self, payload):
        self.c.publish(self.root + "cmd", payload, qos=1).wait_for_publish(5)

    def result(self, cid, timeout=10.0):
        return self.wait(lambda s: next((r for r in s.json("cmd/result") if r.get("id") == cid), None), timeout)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--device", required=True)
    p.add_argument("--key", required=True, help="command_key, 64 hex characters")
    p.add_argument("--seq", type=int, default=int(time.time() * 1000), help="default: now in ms (always grows)")
    p.add_argument("--ttl", type=int, default=300, help="seconds until the command expires")
    p.add_argument("op")
    p.add_argument("args", nargs="?", default="{}")
    a = p.parse_args(argv)
    cloud = Cloud(a.host, a.port, a.device)
    cid = str(uuid.uuid4())
    cloud.send(command(a.key, a.op, json.loads(a.args), a.seq, int(time.time()) + a.ttl, cid))
    res = cloud.result(cid)
    cloud.close()
    print(json.dumps(res) if res else "no result within 10 s")
    return 0 if res and res.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
