"""Board configs checked against the chip before they reach a board.

    python -m tools.check_boards [board_configs/NAME.json ...]   (default: all)
    python -m tools.check_boards --types        also type-check board.py and hal/
                                                against each port's MicroPython stubs

One line per problem, `<file>: <key path>: <rule>`; warnings say `warning:`.
Exit 1 when any config has an error. `make deploy` runs the same checks.

What is checked, and why:
- required keys, and `name` equal to the file name (deploy finds it by name);
- `mpy_arch` is the chip's native arch (mpy-cross -march): a viper .mpy for
  the wrong arch does not load;
- every pin exists on the chip and is free for us: ESP32 GPIO 6-11 are the
  SPI flash, 1/3 are UART0 (the REPL that mpremote uses), 34-39 are inputs
  only (not for TX, DE, SCK, MOSI, CS or a LED); strapping pins (0, 2, 5, 12,
  15) only warn - they work if nothing holds them at the wrong level during
  reset. On an RP2040 Pico (W) GP23, GP24, GP25 and GP29 are not on the header
  (the CYW43 wireless chip on a Pico W), "LED" names its status LED;
- no pin is used twice;
- UART/SPI ids exist: ESP32 UART0 is the REPL console (refused for RS-485);
  machine.SPI ids on an ESP32 are 1 (HSPI) and 2 (VSPI) - ESP-IDF calls them
  SPI2/SPI3, its SPI0/SPI1 drive the flash; the RP2040 has UART0/1 and
  SPI0/1 and routes each signal to fixed pins only (datasheet, GPIO function
  table): TX/RX and SCK/MOSI/MISO must be such pins for the chosen id. CS is
  driven as a plain GPIO by the MCP2515 driver, so a CS away from the SPI
  block's CSn pins only warns;
- CAN: "mcp2515" (on SPI, all its keys) or "machine" (the port's machine.CAN,
  which MicroPython 1.29 lacks on the ESP32 and RP2040: a warning).
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOARDS = ROOT / "board_configs"
VENV = ROOT / "build" / "venv"

REQUIRED = ("name", "description", "chip", "mpy_arch", "min_micropython", "umqtt", "rs485",
            "can", "status_led", "watchdog_ms", "store_dir")
RS485_KEYS = ("uart", "tx", "rx", "baud", "bits", "parity", "stop", "de", "de_active")
CAN_KEYS = ("driver", "spi", "sck", "mosi", "miso", "cs", "int", "spi_baud", "osc_hz", "bitrate")
ARCH = {"esp32": "xtensawin", "rp2040": "armv6m", "unix": "x64"}
BOARD_MIN_MICROPYTHON = [1, 26, 0]  # viper long-jump fixes (DESIGN)

# Pin roles: what the signal needs from the pad.
OUT, IN = "output", "input"
ROLES = {"rs485.tx": OUT, "rs485.rx": IN, "rs485.de": OUT, "can.sck": OUT, "can.mosi": OUT,
         "can.miso": IN, "can.cs": OUT, "can.int": IN, "status_led": OUT}

# --- ESP32 (WROOM/WROVER modules) ---
ESP32_GPIOS = set(range(0, 20)) | {21, 22, 23, 25, 26, 27} | set(range(32, 40))
ESP32_FLASH = set(range(6, 12))
ESP32_CONSOLE = {1: "UART0 TX", 3: "UART0 RX"}
ESP32_INPUT_ONLY = set(range(34, 40))
ESP32_STRAPPING = {0: "boot mode", 2: "boot mode", 5: "SDIO timing", 12: "flash voltage (MTDI)",
                   15: "boot log (MTDO)"}

# --- RP2040 (Raspberry Pi Pico / Pico W), datasheet 2.19.2 function table ---
RP2040_HEADER = set(range(0, 23)) | {26, 27, 28}
RP2040_INTERNAL = {23: "WL_ON", 24: "WL_D", 25: "WL_CS", 29: "WL_CLK/VSYS sense"}
RP2040_UART = {0: {"tx": {0, 12, 16, 28}, "rx": {1, 13, 17, 29}},
               1: {"tx": {4, 8, 20, 24}, "rx": {5, 9, 21, 25}}}
RP2040_SPI = {0: {"miso": {0, 4, 16, 20}, "cs": {1, 5, 17, 21}, "sck": {2, 6, 18, 22},
                  "mosi": {3, 7, 19, 23}},
              1: {"miso": {8, 12, 24, 28}, "cs": {9, 13, 25, 29}, "sck": {10, 14, 26},
                  "mosi": {11, 15, 27}}}

# Type stubs per port for the HAL check: pinned, installed on first use.
STUBS = {"esp32": "micropython-esp32-stubs==1.29.0.post1",
         "rp2": "micropython-rp2-rpi-pico-w-stubs==1.29.0.post1"}
STUBS_DIR = ROOT / "build" / "stubs"


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


class Report:
    def __init__(self):
        self.errors, self.warnings = [], []

    def error(self, path, rule):
        self.errors.append(f"{path}: {rule}")

    def warn(self, path, rule):
        self.warnings.append(f"{path}: {rule}")


def _pins(board):
    """-> [(key path, pin)] for every pin the board config names."""
    out = []
    for section, keys in (("rs485", ("tx", "rx", "de")), ("can", ("sck", "mosi", "miso", "cs", "int"))):
        sec = board.get(section)
        if isinstance(sec, dict):
            out += [(f"{section}.{k}", sec[k]) for k in keys if sec.get(k) is not None]
    if board.get("status_led") is not None:
        out.append(("status_led", board["status_led"]))
    return out


def _check_esp32_pin(r, path, pin):
    role = ROLES[path]
    if pin == "LED":
        r.error(path, '"LED" is the Pico\'s on-board LED; on the esp32 give a GPIO number')
    elif not _is_int(pin) or pin not in ESP32_GPIOS:
        r.error(path, f"GPIO{pin} does not exist on the esp32 (GPIO 0-19, 21-23, 25-27, 32-39)")
    elif pin in ESP32_FLASH:
        r.error(path, f"GPIO{pin} is wired to the SPI flash (GPIO 6-11)")
    elif pin in ESP32_CONSOLE:
        r.error(path, f"GPIO{pin} is {ESP32_CONSOLE[pin]}, the REPL console that deploy and technicians use")
    elif pin in ESP32_INPUT_ONLY and role == OUT:
        r.error(path, f"GPIO{pin} is input-only (GPIO 34-39) and cannot drive an output")
    elif pin in ESP32_STRAPPING:
        r.warn(path, f"GPIO{pin} is a strapping pin ({ESP32_STRAPPING[pin]}): the circuit must not "
                     "hold it at the wrong level during reset")


def _check_esp32_ids(r, board):
    rs = board.get("rs485")
    if isinstance(rs, dict):
        u = rs.get("uart")
        if u == 0:
            r.error("rs485.uart", "UART0 is the REPL console on the esp32: use UART1 or UART2")
        elif u not in (1, 2):
            r.error("rs485.uart", f"no UART{u} on the esp32 (UART 1 or 2)")
    can = board.get("can")
    if isinstance(can, dict) and can.get("driver") == "mcp2515" and "spi" in can:
        s = can["spi"]
        if s == 0:
            r.error("can.spi", "SPI0/SPI1 drive the flash; machine.SPI ids are 1 (HSPI) and 2 (VSPI)")
        elif s not in (1, 2):
            r.error("can.spi", f"no machine.SPI({s}) on the esp32: ids are 1 (HSPI) and 2 (VSPI; "
                               "ESP-IDF's SPI3)")


def _check_rp2040_pin(r, path, pin):
    if pin == "LED":
        if path != "status_led":
            r.error(path, '"LED" is the on-board status LED; only status_led may use it')
    elif not _is_int(pin) or not 0 <= pin <= 29:
        r.error(path, f"GP{pin} does not exist on the rp2040 (GP0-GP29)")
    elif pin in RP2040_INTERNAL:
        r.error(path, f"GP{pin} is not on the Pico W header: the CYW43 wireless chip uses it "
                      f"({RP2040_INTERNAL[pin]})")


def _check_rp2040_ids(r, board):
    rs = board.get("rs485")
    if isinstance(rs, dict):
        u = rs.get("uart")
        if u not in RP2040_UART:
            r.error("rs485.uart", f"no UART{u} on the rp2040 (UART 0 or 1)")
        else:
            for sig in ("tx", "rx"):
                pin = rs.get(sig)
                if _is_int(pin) and pin not in RP2040_UART[u][sig]:
                    ok = ", ".join(f"GP{p}" for p in sorted(RP2040_UART[u][sig]))
                    r.error(f"rs485.{sig}", f"GP{pin} cannot be UART{u} {sig.upper()} ({ok})")
    can = board.get("can")
    if isinstance(can, dict) and can.get("driver") == "mcp2515" and "spi" in can:
        s = can["spi"]
        if s not in RP2040_SPI:
            r.error("can.spi", f"no SPI{s} on the rp2040 (SPI 0 or 1)")
            return
        for sig in ("sck", "mosi", "miso", "cs"):
            pin = can.get(sig)
            if not _is_int(pin) or pin in RP2040_SPI[s][sig]:
                continue
            ok = ", ".join(f"GP{p}" for p in sorted(RP2040_SPI[s][sig]))
            if sig == "cs":
                r.warn("can.cs", f"GP{pin} is not an SPI{s} CSn pin ({ok}); fine for a CS driven as a GPIO")
            else:
                r.error(f"can.{sig}", f"GP{pin} cannot be SPI{s} {sig.upper()} ({ok})")


def _check_sections(r, board):
    rs = board.get("rs485")
    if rs is not None:
        if not isinstance(rs, dict):
            r.error("rs485", "must be null or an object")
        else:
            for k in RS485_KEYS:
                if k not in rs:
                    r.error(f"rs485.{k}", "required")
            if "baud" in rs and not (_is_int(rs["baud"]) and 1200 <= rs["baud"] <= 1000000):
                r.error("rs485.baud", "must be an integer 1200..1000000")
            if rs.get("bits") not in (None, 7, 8, 9):
                r.error("rs485.bits", "must be 7, 8 or 9")
            if rs.get("parity") not in (None, 0, 1):
                r.error("rs485.parity", "must be null (none), 0 (even) or 1 (odd)")
            if rs.get("stop") not in (None, 1, 2):
                r.error("rs485.stop", "must be 1 or 2")
            if rs.get("de_active") not in (None, 0, 1):
                r.error("rs485.de_active", "must be 0 or 1")
    can = board.get("can")
    if can is not None:
        if not isinstance(can, dict):
            r.error("can", "must be null or an object")
        elif can.get("driver") == "machine":
            # The port's own controller (hal/can_build.py): no SPI pins of ours.
            if not _is_int(can.get("id", 0)) or can.get("id", 0) < 0:
                r.error("can.id", "must be an integer >= 0")
            if board.get("chip") in ("esp32", "rp2040"):
                r.warn("can.driver", f"MicroPython 1.29 has no machine.CAN on the {board['chip']}; "
                                     "the firmware image must provide it")
        elif can.get("driver") != "mcp2515":
            r.error("can.driver", 'must be "mcp2515" (on SPI) or "machine" (the port\'s machine.CAN)')
        else:
            for k in CAN_KEYS:
                if k not in can:
                    r.error(f"can.{k}", "required")


def check(board, name=None):
    """-> (errors, warnings): lists of "key path: rule" lines."""
    r = Report()
    if not isinstance(board, dict):
        r.error("board config", "must be a JSON object")
        return r.errors, r.warnings
    for k in REQUIRED:
        if k not in board:
            r.error(k, "required")
    if name is not None and board.get("name") not in (None, name):
        r.error("name", f'is "{board["name"]}" but the file is {name}.json')
    chip = board.get("chip")
    if chip not in ARCH:
        r.error("chip", "must be one of " + ", ".join(f'"{c}"' for c in ARCH))
        return r.errors, r.warnings
    if "mpy_arch" in board and board["mpy_arch"] != ARCH[chip]:
        r.error("mpy_arch", f'must be "{ARCH[chip]}" for the {chip} (mpy-cross -march), not "{board["mpy_arch"]}"')
    mmp = board.get("min_micropython")
    if "min_micropython" in board:
        if not (isinstance(mmp, list) and len(mmp) == 3 and all(_is_int(x) for x in mmp)):
            r.error("min_micropython", "must be [major, minor, micro]")
        elif chip != "unix" and mmp < BOARD_MIN_MICROPYTHON:
            r.error("min_micropython", "must be at least [1, 26, 0] on a board (viper long-jump fixes)")
    if board.get("umqtt", "lib") not in ("frozen", "mip", "lib"):
        r.error("umqtt", 'must be "frozen", "mip" or "lib"')
    if "watchdog_ms" in board and not (_is_int(board["watchdog_ms"]) and board["watchdog_ms"] >= 0):
        r.error("watchdog_ms", "must be an integer >= 0 (0: no watchdog)")
    if "store_dir" in board and not (isinstance(board["store_dir"], str) and board["store_dir"]):
        r.error("store_dir", "must be a non-empty path")
    _check_sections(r, board)

    pins = _pins(board)
    if chip == "unix":
        for path, _ in pins:
            r.error(path, "the unix port has no pins: must be null")
        return r.errors, r.warnings
    seen = {}
    for path, pin in pins:
        if pin in seen:
            r.error(path, f"pin {pin} is already used by {seen[pin]}")
        seen.setdefault(pin, path)
        if chip == "esp32":
            _check_esp32_pin(r, path, pin)
        else:
            _check_rp2040_pin(r, path, pin)
    if chip == "esp32":
        _check_esp32_ids(r, board)
    else:
        _check_rp2040_ids(r, board)
    return r.errors, r.warnings


def check_file(path):
    path = Path(path)
    try:
        board = json.loads(path.read_text())
    except OSError as e:
        return [f"cannot read: {e.strerror}"], []
    except ValueError as e:
        return [f"not valid JSON: {e}"], []
    return check(board, path.stem)


# --- HAL type check ---------------------------------------------------------

MYPY_INI = """\
# Generated by tools/check_boards.py. The firmware is untyped MicroPython:
# bodies are checked (check_untyped_defs) so calls into `machine` must match
# the port's stubs (wrong keyword, unknown attribute, wrong argument type),
# without demanding annotations or Optional narrowing from untyped code.
[mypy]
python_version = 3.11
check_untyped_defs = True
strict_optional = False
warn_unused_configs = False
# The stub packages themselves are not ours to fix.
ignore_errors = True
# Only the modules named on the command line (board.py, hal/) are judged;
# what they import (drivers, viper code) is read for types, not reported.
follow_imports = silent

[mypy-v2g.*]
ignore_errors = False
"""


def hal_modules():
    fw = ROOT / "firmware"
    mods = [fw / "v2g" / "board.py", *sorted((fw / "v2g" / "hal").glob("*.py"))]
    return [str(m.relative_to(fw)) for m in mods]


def ensure_stubs(port):
    """Install the pinned stubs into build/stubs/<port> on first use."""
    target = STUBS_DIR / port
    stamp = target / ".installed"
    if stamp.exists() and stamp.read_text().strip() == STUBS[port]:
        return target
    if target.exists():
        import shutil

        shutil.rmtree(target)
    res = subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                          "--target", str(target), STUBS[port]], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"pip could not install {STUBS[port]}: {res.stderr.strip()[-300:]}")
    stamp.write_text(STUBS[port] + "\n")
    return target


def typecheck(port, modules=None, cwd=None):
    """mypy over the HAL modules (paths relative to cwd, default firmware/)
    against the port's stubs -> (ok, output)."""
    stubs = ensure_stubs(port)
    work = ROOT / "build" / "mypy"
    work.mkdir(parents=True, exist_ok=True)
    ini = work / "mypy.ini"
    ini.write_text(MYPY_INI)
    env = dict(os.environ, MYPYPATH=str(stubs))
    cmd = [str(VENV / "bin" / "mypy"), "--config-file", str(ini), "--cache-dir", str(work / f"cache-{port}"),
           "--no-error-summary", "--hide-error-context", *(modules or hal_modules())]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd or ROOT / "firmware")
    return res.returncode == 0, (res.stdout + res.stderr).strip()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.check_boards", description=__doc__.split("\n")[0])
    p.add_argument("files", nargs="*", help="board config files (default: board_configs/*.json)")
    p.add_argument("--types", action="store_true", help="also type-check board.py and hal/ with mypy")
    args = p.parse_args(argv)
    files = args.files or sorted(BOARDS.glob("*.json"))
    failed = False
    for f in files:
        errors, warnings = check_file(f)
        label = Path(f).name
        for w in warnings:
            print(f"{label}: warning: {w}")
        for e in errors:
            print(f"{label}: {e}")
        if not errors:
            print(f"{label}: ok")
        failed |= bool(errors)
    if args.types:
        for port in STUBS:
            ok, out = typecheck(port)
            print(f"hal types ({port} stubs): " + ("ok" if ok else "FAILED"))
            if not ok:
                print(out)
            failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
