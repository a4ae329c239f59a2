# Builds the hardware the config asks for, from the board's pin map.
# The only place (with hal/) that imports `machine`; everything else gets
# streams and buses passed in, so the unix port runs the very same drivers.
#
# Layering, top to bottom: config (parses the links, once) -> board -> hal/ ->
# drivers (can/, modbus, sunspec). Each imports only from below it; here and
# in hal/ the links are the parsed values config.validate() stores next to
# the strings (cfg[...]["link_parsed"], see config.py), never the strings.


def host_port(text):
    """ "HOST:PORT" -> (HOST, PORT), already checked by config: for
    ntp.server (v2g.timesync); the links come parsed."""
    i = text.rfind(":")
    return text[:i], int(text[i + 1:])


def inverter_stream(cfg, board):
    """-> (stream, baud or None). baud None means no serial timing (TCP)."""
    link = cfg["inverter"]["link_parsed"]
    if link[0] == "tcp":
        from v2g.hal.tcpstream import TcpStream

        return TcpStream(link[1], link[2]), None
    if link[0] != "uart":
        raise ValueError("inverter.link_parsed: " + str(link[0]))
    import machine

    from v2g.hal.uart485 import Rs485

    rs = board["rs485"]
    baud = cfg["inverter"]["baud"] or rs["baud"]
    uart = machine.UART(
        rs["uart"], baudrate=baud, bits=rs["bits"], parity=rs["parity"], stop=rs["stop"],
        tx=machine.Pin(rs["tx"]), rx=machine.Pin(rs["rx"]), timeout=0, rxbuf=512,
    )
    de = None
    if rs.get("de") is not None:
        de = machine.Pin(rs["de"], machine.Pin.OUT, value=1 - rs["de_active"])
    return Rs485(uart, de, rs["de_active"], baud), baud


def watchdog(board):
    """A hardware watchdog when the board has one, else None."""
    ms = board.get("watchdog_ms") or 0
    if not ms:
        return None
    import machine

    return machine.WDT(timeout=ms)


def wifi_up(cfg):
    """Start joining the configured Wi-Fi (esp32, Pico W) without waiting:
    the cloud link and SNTP retry until it is up. None without wifi.ssid
    (the unix port, or a network the installer's boot.py brings up)."""
    w = cfg["wifi"]
    if not w["ssid"]:
        return None
    import network

    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(w["ssid"], w["password"] or "")
    return wlan


def reset():
    """A hard reset of the board (tech.restart(), after a clean stop). The
    unix port's machine module has no reset() (the pty board of make deploy
    adds one); without it the process exits and its launcher restarts it."""
    import sys

    import machine

    hard = getattr(machine, "reset", None)
    if hard is not None:
        hard()
    sys.exit(0)
