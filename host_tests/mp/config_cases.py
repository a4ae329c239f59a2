# test_config.py's MicroPython half: v2g.config (host_tests/mp/cases.py).
import json

import cases
from v2g import config


def validate_many(path):
    # PATH: a JSON list of raw configs; one line each: "ok" or "path: rule"
    for raw in json.loads(open(path).read()):
        try:
            config.validate(raw)
            print("ok")
        except config.ConfigError as e:
            print(e.path + ": " + e.rule)


def defaults():
    # what load() fills in for examples/site.json
    c = config.load("examples/site.json")
    return [c["control"]["period_ms"], c["inverter"]["revert_s"], c["mqtt"]["client_id"],
            c["vehicle"]["driver"], c["tariff"]["periods"][0]["start"], c["departure"]["time"],
            c["departure"]["week_min"], c["battery"]["chemistry"]]


def month_tariffs():
    # examples/site.json's tariff per month, January first: (periods, top import)
    c = config.load("examples/site.json")
    t = c["tariff"]
    out = []
    for ps in t["seasons"]:
        ps = ps or t["periods"]
        out.append([len(ps), max(p["import"] for p in ps)])
    # January's (winter's) valley is tariff.periods' own object: one dict held
    shared = t["seasons"][0][0] is t["periods"][0] and t["seasons"][6][0] is t["periods"][0]
    return [out, t["seasons"][6][0]["start"], shared, t["seasons"][6][3] is t["periods"][2]]


def wear_costs(path):
    # PATH: a JSON list of raw configs -> each one's battery.wear_cost_per_kwh after validation
    return [config.validate(raw)["battery"]["wear_cost_per_kwh"] for raw in json.loads(open(path).read())]


def week_mins(path):
    # PATH: a JSON list of raw configs -> each one's parsed departure.week_min
    return [list(config.validate(raw)["departure"]["week_min"]) for raw in json.loads(open(path).read())]


def client_ids(path):
    # PATH: a JSON list of raw configs -> the mqtt.client_id of each
    return [config.validate(raw)["mqtt"]["client_id"] for raw in json.loads(open(path).read())]


def compact_copy():
    # app.load hands out a copy of the validated tree (the originals were
    # scattered through the validator's garbage): equal, its floats and
    # containers new, what the config shares still shared
    from v2g import app

    c = config.load("examples/site.json")
    d = app._compact(c, {})
    t, u = c["tariff"], d["tariff"]
    cfg, board = app.load("examples/site.json", "board_configs")
    return {
        "equal": d == c and cfg == c,
        "new_containers": d is not c and u["periods"] is not t["periods"] and u["periods"][0] is not t["periods"][0],
        "new_floats": u["periods"][0]["import"] is not t["periods"][0]["import"],
        "summer_shared": u["seasons"][6] is u["seasons"][7] and u["seasons"][7] is u["seasons"][8],
        "valley_shared": u["seasons"][0][0] is u["periods"][0] and cfg["tariff"]["seasons"][0][0] is cfg["tariff"]["periods"][0],
        "board_kept": bool(board),
    }


cases.main(globals())
