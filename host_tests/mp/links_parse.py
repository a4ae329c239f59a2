# Validates site configs and parses single links on the unix port; prints one
# JSON line (host_tests/test_links.py).
#   micropython links_parse.py CASES.json
# CASES.json: {"configs": [raw config, ...], "links": [[key, text], ...]}
# Out: {"configs": [{"inverter": [link, parsed], "vehicle": [link, parsed]}
#                   or {"error": "path: rule"}, ...],
#       "links": [parsed or "path: rule", ...]}
import json
import sys

from v2g import config


def one(fn, *args):
    try:
        return fn(*args)
    except config.ConfigError as e:
        return {"error": e.path + ": " + e.rule}


def links(cfg):
    return {k: [cfg[k]["link"], cfg[k]["link_parsed"]] for k in ("inverter", "vehicle")}


cases = json.loads(open(sys.argv[1]).read())
out = {"configs": [], "links": []}
for raw in cases["configs"]:
    r = one(config.validate, raw)
    out["configs"].append(r if "error" in r else links(r))
for key, text in cases["links"]:
    out["links"].append(one(config.parse_link, key, text))
print(json.dumps(out))
