"""Secrets (command key, MQTT password, TLS client key) never appear in any
topic, log line or error output: everything is captured and searched."""
import base64
import json
import subprocess

from conftest import ROOT, site_config
from test_tls import pki, start  # noqa: F401 - the module-scoped CA fixture
from tools.cloud_client import Cloud, command

DEV = "home-charger-01"
PASSWORD = "s3cr3t-Broker-Pass!"


def forms(secret_bytes):
    """Ways a secret could leak into text."""
    out = {secret_bytes.hex(), secret_bytes.hex().upper(), base64.b64encode(secret_bytes).decode()}
    try:
        out.add(secret_bytes.decode())
    except UnicodeDecodeError:
        pass
    return {f for f in out if len(f) >= 8}


def test_no_secret_in_topics_logs_or_errors(tmp_path, broker, live_inverter, firmware, pki):  # noqa: F811
    key_der = (pki / "client.key.der").read_bytes()
    b = broker(tls={"ca": str(pki / "ca.pem"), "cert": str(pki / "server.pem"), "key": str(pki / "server.key")})
    inv = live_inverter()
    cfg_path, cfg = site_config(
        tmp_path, inv.port, b.port, mqtt__host="localhost", mqtt__user="charger", mqtt__password=PASSWORD,
        mqtt__tls={"ca": str(pki / "ca.der"), "cert": str(pki / "client.der"), "key": str(pki / "client.key.der")})
    key_hex = cfg["command_key"]
    fw = firmware(cfg_path)
    cloud = Cloud("localhost", b.port, "+", tls_ca_pem=str(pki / "ca.pem"))
    cloud.root = "v2g/1/"
    cloud.c.subscribe("#", qos=1)
    try:
        assert fw.wait_event("cloud_connected", timeout=15)
        now = int(inv.clock.now())
        root = f"v2g/1/{DEV}/cmd"
        for i, (op, args) in enumerate([("set_reserve", {"pct": 33}), ("set_mode", {"mode": "turbo"}),
                                        ("clear_fault", {})]):
            cloud.c.publish(root, command(key_hex, op, args, 10 + i, now + 600, f"s{i}"), qos=1)
        cloud.c.publish(root, command("00" * 32, "set_reserve", {"pct": 40}, 20, now + 600, "forged"), qos=1)
        cloud.c.publish(root, b"garbage", qos=1)
        assert cloud.wait(lambda c: len([t for t, _, _ in c.msgs if t.endswith("cmd/result")]) >= 5, timeout=15)
        fw.wait_event("never", timeout=11)  # at least one periodic state
    finally:
        rc = fw.stop()
    assert rc == 0
    seen = {t.rsplit("/", 1)[-1] for t, _, _ in cloud.msgs}
    topics = b"\n".join(p for t, p, _ in cloud.msgs if not t.endswith("/cmd"))
    cloud.close()
    assert {"status", "state", "telemetry", "event", "result"} <= seen
    # config errors must not echo secret values either
    bad = json.loads(cfg_path.read_text())
    bad["command_key"] = key_hex[:-1] + "z"
    bad["mqtt"]["password"] = ""
    badp = tmp_path / "bad.json"
    badp.write_text(json.dumps(bad))
    err = subprocess.run([str(ROOT / "build" / "venv" / "bin" / "python"), str(ROOT / "tools" / "run_unix.py"),
                          str(badp)], capture_output=True, text=True)
    assert err.returncode == 2
    text = fw.output() + err.stdout + err.stderr
    everything = text.encode() + b"\n" + topics
    assert len(topics) > 1000 and len(text) > 1000
    for secret in [bytes.fromhex(key_hex), key_hex.encode(), PASSWORD.encode(), key_der]:
        for f in forms(secret) | {secret.decode(errors="ignore")} - {""}:
            if len(f) >= 8:
                assert f.encode() not in everything, "a secret leaked"
