# How a test's MicroPython half runs: host_tests/mp/<test>_cases.py holds one
# function per test and ends with `cases.main(globals())`, so that
#
#     micropython host_tests/mp/<test>_cases.py CASE [ARG...]
#
# calls CASE(ARG...) (the arguments as strings) and prints what it returns
# as one JSON line; a case that prints for itself returns None. Run from the
# repository root with MICROPYPATH=firmware:build/lib:.frozen.
import json
import sys


def main(ns):
    if len(sys.argv) < 2 or sys.argv[1] not in ns:
        names = sorted(k for k, v in ns.items() if callable(v) and not k.startswith("_") and k[0].islower())
        sys.stderr.write("usage: CASE [ARG...], CASE one of: " + " ".join(names) + "\n")
        sys.exit(2)
    out = ns[sys.argv[1]](*sys.argv[2:])
    if out is not None:
        print(json.dumps(out))
