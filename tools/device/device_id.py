# On the device: one repr line, the device_id of its config.json (None
# without a readable one).
import json

try:
    with open("config.json") as f:
        print(repr(json.load(f).get("device_id")))
except Exception:
    print(repr(None))
