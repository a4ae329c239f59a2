# The latest southbound measurements: one object, made once by the control
# loop and refilled in place by the drivers every tick (sunspec.refresh, the
# vehicle session's SoC). Every field a driver fills is declared here, so the
# guard, the status record and the technician read a known set. None = not
# read (the point is not implemented, or the link is down).


class Meas:
    """Latest southbound measurements; None = unknown. Reused, never reallocated."""

    def __init__(self):
        # what the guard protects on (each with the tick it was last read)
        self.soc_cpct = None  # 0.01 %: the car's SoC with a vehicle session, else 713 SoC
        self.soc_res_cpct = 1  # resolution of the SoC reading
        self.soc_tick = -1  # tick number of the last fresh SoC sample
        self.ev_w = None  # W, + into the car (701 W)
        self.ev_tick = -1
        self.hz_mhz = None  # grid frequency, mHz (701 Hz)
        self.hz_tick = -1
        # a car on the connector: the vehicle session's, else whether the
        # inverter's 713 SoC is implemented (CONTRACT section 8); None
        # before the first reading
        self.plugged = None
        self.inv_fault = None  # None or a short code, e.g. "inverter_alarm"
        self.inv_soc_cpct = None  # the inverter's own (713) SoC, cross-checked against a vehicle's
        # energy counters (701 TotWhAbs / TotWhInj), Wh since the inverter's start
        self.wh_in = None
        self.wh_out = None
        # AC side, for the technician (701)
        self.ac_v = None  # V, line-neutral (else line-line)
        self.ac_a = None  # 0.01 A
        self.var = None
        self.va = None
        self.pf_c = None  # power factor x 100
        self.inv_state = None  # 701 InvSt enum
        # storage (713)
        self.wh_avail = None
        self.soh_cpct = None  # state of health, 0.01 %
        # DC side (714, when the inverter has it: the car's DC port), for the
        # vehicle session's present output (CHAdeMO 0x109) and the technician
        self.dc_v = None  # V, the port's DCV (None when the model lists no ports)
        self.dc_a = None  # A, + into the car (714 DCA is + toward the grid)
        self.dc_w = None  # W, + into the car (714 DCW)
