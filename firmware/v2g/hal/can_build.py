# Builds the vehicle's CAN bus from the validated site config (CONTRACT
# section 7, vehicle.link, as config parsed it into vehicle.link_parsed) and
# the board config's "can" section:
#
#   ("can",)                    the board's controller:
#                               "driver": "mcp2515" (default): SPI id, sck/mosi/miso,
#                                 cs, optional int pin, spi_baud, osc_hz, bitrate
#                               "driver": "machine": the port's machine.CAN(id, bitrate)
#   ("slcan_pty", PATH)         an SLCAN adapter on a serial device or pty (unix port)
#   ("slcan_tcp", HOST, PORT)   SLCAN lines over TCP (simulator, gateway): the
#                               stream is hal.tcpstream's, opened here and
#                               injected into the bus (v2g.can imports no hal)
#
# Like the rest of hal/, the only place besides board.py that imports
# machine, and only for "can". A missing or silent MCP2515 raises OSError
# (ENODEV) here, at start-up; an SLCAN link that is not there yet does not:
# the bus starts "bus_off" and the session's once-a-second recover() finds
# it when it appears.
from micropython import const

_DEFAULT_BITRATE = const(500000)  # CHAdeMO
_SLCAN_CONNECT_MS = const(200)  # a recover() attempt costs at most this


def open_slcan_tcp(host, port, connect_timeout_ms=_SLCAN_CONNECT_MS):
    """The stream for ("slcan_tcp", HOST, PORT): a hal.tcpstream.TcpStream,
    connected if the peer is there (else SlcanBus starts down and its
    recover() calls the stream's reopen() again)."""
    from v2g.hal.tcpstream import TcpStream

    s = TcpStream(host, port, connect_timeout_ms)
    try:
        s.reopen()
    except OSError:
        pass
    return s


def vehicle_bus(cfg, board):
    """-> a v2g.can bus for cfg["vehicle"]["link_parsed"] (config.validate)."""
    link = cfg["vehicle"]["link_parsed"]
    kind = link[0]
    if kind == "slcan_tcp":
        from v2g.can.slcan import SlcanBus

        return SlcanBus(open_slcan_tcp(link[1], link[2]))
    if kind == "slcan_pty":
        from v2g.can.slcan import SlcanBus, open_pty

        return SlcanBus(open_pty(link[1]))
    if kind != "can":
        raise ValueError("vehicle.link_parsed: " + str(kind))
    c = board.get("can")
    if not c:
        raise ValueError("board has no CAN controller")
    import machine

    bitrate = c.get("bitrate") or _DEFAULT_BITRATE
    if c.get("driver") == "machine":
        from v2g.can.machine_can import MachineCanBus

        # Only some firmwares have machine.CAN (mainline, recent); say so
        # plainly instead of an AttributeError.
        can_class = getattr(machine, "CAN", None)
        if can_class is None:
            raise ValueError('board can.driver "machine": this firmware has no machine.CAN')
        return MachineCanBus(can_class(c.get("id", 0), bitrate))
    from v2g.can.mcp2515 import MCP2515

    Pin = machine.Pin
    # SPI mode 0,0 (the MCP2515 takes 0,0 or 1,1); up to 10 MHz.
    spi = machine.SPI(c["spi"], baudrate=c.get("spi_baud") or 8000000, polarity=0, phase=0,
                      sck=Pin(c["sck"]), mosi=Pin(c["mosi"]), miso=Pin(c["miso"]))
    cs = Pin(c["cs"], Pin.OUT, value=1)
    int_pin = None
    if c.get("int") is not None:
        int_pin = Pin(c["int"], Pin.IN, Pin.PULL_UP)  # open-drain, active low
    bus = MCP2515(spi, cs, osc_hz=c.get("osc_hz") or 8000000, bitrate=bitrate, int_pin=int_pin)
    if int_pin is not None and hasattr(int_pin, "irq"):
        # Frames move into the driver's ring as they arrive (a scheduled
        # callback, not a hard IRQ: SPI is not allowed in a hard one), so a
        # slower control loop loses none of a car's 4-frame bursts.
        int_pin.irq(trigger=Pin.IRQ_FALLING, handler=bus.irq_handler)
    return bus
