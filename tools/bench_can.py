"""CAN benchmark: the firmware's SLCAN parser + CHAdeMO decoder on the unix port.

The car's frames of the real Nissan Leaf capture, as the SLCAN lines an
adapter would deliver, are fed from memory to v2g.can.slcan.SlcanBus (the
stream copies preallocated 512-byte chunks, so it allocates nothing itself)
and every frame goes through v2g.chademo.decode() (tools/device/bench_can.py).
Measured in the same run:

    can_frames_per_s_decoded          frames parsed + decoded per second
    can_decode_vs_bus_rate            that / 4,000 (a 500 kbit/s bus full of
                                      8-byte frames): the headroom
    can_alloc_bytes_per_frame         heap bytes allocated per frame (target 0)
    can_slcan_speedup_viper_vs_bytecode
                                      the same parser source with the viper
                                      decorators removed, run as bytecode

    build/venv/bin/python -m tools.bench_can
"""
import json
import subprocess
import sys
from pathlib import Path

from tools import device
from tools.harness import MICROPYTHON, ROOT, mp_env

BUS_FRAMES_PER_S = 4000  # 500 kbit/s, 8-byte standard frames with stuffing: ~125 bits each


def slcan_text():
    """The capture's vehicle frames as adapter lines (with a timestamp on
    every fourth, as adapters do after "Z1"), as bytes."""
    from tools.sim.vehicle import vehicle_frames

    out = []
    for i, (t, cid, data) in enumerate(vehicle_frames()):
        line = "t%03X%d%s" % (cid, len(data), data.hex().upper())
        if i % 4 == 3:
            line += "%04X" % (int(t * 1000) % 60000)
        out.append(line + "\r")
    return "".join(out).encode()


def run(results):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "frames.slcan"
        p.write_bytes(slcan_text())
        res = subprocess.run([MICROPYTHON, str(device.path("bench_can")), str(p),
                              str(ROOT / "firmware" / "v2g" / "can" / "slcan.py"), str(BUS_FRAMES_PER_S)],
                             capture_output=True, text=True, env=mp_env(), timeout=300, cwd=str(ROOT))
    if res.returncode != 0:
        raise RuntimeError(f"micropython failed:\n{res.stdout}\n{res.stderr}")
    got = json.loads(res.stdout.strip().splitlines()[-1])
    if got.pop("can_bench_bad"):
        raise RuntimeError("the capture did not parse/decode cleanly")
    got.pop("can_bench_last_soc")
    results.update(got)
    return results


def main():
    results = run({})
    for k, v in results.items():
        print(f"  {k:45s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
