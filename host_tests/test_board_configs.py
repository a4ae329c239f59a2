"""Board configs against their chip (tools/check_boards.py), and the HAL's
calls into `machine` against each port's MicroPython stubs (mypy)."""
import copy
import json
import subprocess
import sys

import pytest

from conftest import MP, ROOT
from tools import check_boards

SHIPPED = sorted(p.stem for p in (ROOT / "board_configs").glob("*.json"))


def board(name):
    return json.loads((ROOT / "board_configs" / f"{name}.json").read_text())


def broken(name, **changes):
    """The shipped config with "section__key"=value changes (None deletes)."""
    b = copy.deepcopy(board(name))
    for path, value in changes.items():
        keys = path.split("__")
        d = b
        for k in keys[:-1]:
            d = d[k]
        if value is None:
            del d[keys[-1]]
        else:
            d[keys[-1]] = value
    return b


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_board_configs_pass(name):
    errors, _ = check_boards.check(board(name), name)
    assert errors == []


def test_strapping_pins_only_warn():
    errors, warnings = check_boards.check(board("esp32_devkitc"), "esp32_devkitc")
    assert errors == []
    assert any(w.startswith("status_led: GPIO2 is a strapping pin") for w in warnings)


@pytest.mark.parametrize("name, changes, expected", [
    # the five an installer is most likely to get wrong
    ("esp32_devkitc", {"rs485__de": 18}, "can.sck: pin 18 is already used by rs485.de"),
    ("esp32_devkitc", {"rs485__tx": 40}, "rs485.tx: GPIO40 does not exist on the esp32"),
    ("esp32_devkitc", {"rs485__uart": 0}, "rs485.uart: UART0 is the REPL console"),
    ("rp2040_pico_w", {"can__int": 23}, "can.int: GP23 is not on the Pico W header"),
    ("esp32_devkitc", {"mpy_arch": "armv6m"}, 'mpy_arch: must be "xtensawin" for the esp32'),
    # ESP32 pads
    ("esp32_devkitc", {"can__cs": 7}, "can.cs: GPIO7 is wired to the SPI flash"),
    ("esp32_devkitc", {"rs485__de": 35}, "rs485.de: GPIO35 is input-only"),
    ("esp32_devkitc", {"can__sck": 1}, "can.sck: GPIO1 is UART0 TX, the REPL console"),
    ("esp32_devkitc", {"status_led": 20}, "status_led: GPIO20 does not exist"),
    ("esp32_devkitc", {"status_led": "LED"}, "status_led: \"LED\" is the Pico's on-board LED"),
    ("esp32_devkitc", {"rs485__uart": 3}, "rs485.uart: no UART3 on the esp32"),
    ("esp32_devkitc", {"can__spi": 0}, "can.spi: SPI0/SPI1 drive the flash"),
    ("esp32_devkitc", {"can__spi": 3}, "can.spi: no machine.SPI(3) on the esp32"),
    # RP2040 function table
    ("rp2040_pico_w", {"rs485__tx": 0}, "rs485.tx: GP0 cannot be UART1 TX (GP4, GP8, GP20, GP24)"),
    ("rp2040_pico_w", {"rs485__uart": 0}, "rs485.tx: GP4 cannot be UART0 TX"),
    ("rp2040_pico_w", {"can__sck": 10}, "can.sck: GP10 cannot be SPI0 SCK"),
    ("rp2040_pico_w", {"can__spi": 2}, "can.spi: no SPI2 on the rp2040"),
    ("rp2040_pico_w", {"rs485__de": "LED"}, "rs485.de: \"LED\" is the on-board status LED"),
    ("rp2040_pico_w", {"rs485__rx": 30}, "rs485.rx: GP30 does not exist"),
    ("rp2040_pico_w", {"mpy_arch": "xtensawin"}, 'mpy_arch: must be "armv6m" for the rp2040'),
    # keys and values
    ("unix_sim", {"mpy_arch": None}, "mpy_arch: required"),
    ("unix_sim", {"mpy_arch": "xtensawin"}, 'mpy_arch: must be "x64" for the unix'),
    ("unix_sim", {"status_led": 2}, "status_led: the unix port has no pins"),
    ("unix_sim", {"chip": "esp8266"}, "chip: must be one of"),
    ("rp2040_pico_w", {"min_micropython": [1, 25, 0]}, "min_micropython: must be at least [1, 26, 0]"),
    ("rp2040_pico_w", {"rs485__baud": None}, "rs485.baud: required"),
    ("esp32_devkitc", {"can__driver": "sja1000"}, 'can.driver: must be "mcp2515" (on SPI) or "machine"'),
    ("esp32_devkitc", {"umqtt": "pip"}, 'umqtt: must be "frozen", "mip" or "lib"'),
])
def test_broken_board_config_is_refused(name, changes, expected):
    errors, _ = check_boards.check(broken(name, **changes), name)
    assert any(e.startswith(expected) for e in errors), errors


def test_name_must_match_the_file():
    errors, _ = check_boards.check(board("unix_sim"), "unix_sim2")
    assert errors == ['name: is "unix_sim" but the file is unix_sim2.json']


def test_machine_can_driver_is_accepted_with_a_warning_on_1_29_chips():
    b = broken("esp32_devkitc")
    b["can"] = {"driver": "machine", "id": 0, "bitrate": 500000}
    errors, warnings = check_boards.check(b, "esp32_devkitc")
    assert errors == []
    assert any(w.startswith("can.driver: MicroPython 1.29 has no machine.CAN") for w in warnings)


def test_rp2040_cs_off_the_csn_pins_only_warns():
    errors, warnings = check_boards.check(broken("rp2040_pico_w", can__cs=22), "rp2040_pico_w")
    assert errors == []
    assert any(w.startswith("can.cs: GP22 is not an SPI0 CSn pin") for w in warnings)


def test_cli_prints_one_line_per_error(tmp_path):
    bad = tmp_path / "esp32_devkitc.json"
    bad.write_text(json.dumps(broken("esp32_devkitc", rs485__tx=40, rs485__uart=0)))
    res = subprocess.run([sys.executable, "-m", "tools.check_boards", str(bad)],
                         capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 1
    errors = [l for l in res.stdout.splitlines() if "warning:" not in l]
    assert errors == ["esp32_devkitc.json: rs485.tx: GPIO40 does not exist on the esp32 "
                      "(GPIO 0-19, 21-23, 25-27, 32-39)",
                      "esp32_devkitc.json: rs485.uart: UART0 is the REPL console on the esp32: "
                      "use UART1 or UART2"]
    assert "Traceback" not in res.stdout + res.stderr


def test_cli_passes_the_shipped_configs():
    res = subprocess.run([sys.executable, "-m", "tools.check_boards"], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stdout
    assert [l for l in res.stdout.splitlines() if l.endswith(": ok")] == [f"{n}.json: ok" for n in SHIPPED]


# --- the HAL type-checks against the ports' stubs ---------------------------

@pytest.mark.parametrize("port", sorted(check_boards.STUBS))
def test_hal_type_checks_against_port_stubs(port):
    ok, out = check_boards.typecheck(port)
    assert ok, out


BAD_HAL = MP / "board_configs_bad_hal.py"


@pytest.mark.parametrize("port", sorted(check_boards.STUBS))
def test_wrong_machine_calls_fail_the_type_check(tmp_path, port):
    (tmp_path / "v2g" / "hal").mkdir(parents=True)
    (tmp_path / "v2g" / "__init__.py").write_text("")
    (tmp_path / "v2g" / "hal" / "__init__.py").write_text("")
    (tmp_path / "v2g" / "hal" / "bad.py").write_text(BAD_HAL.read_text())
    ok, out = check_boards.typecheck(port, ["v2g/hal/bad.py"], cwd=tmp_path)
    assert not ok
    assert 'Unexpected keyword argument "txpin"' in out
    assert 'has no attribute "OUTPUT"' in out
