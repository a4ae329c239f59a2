# Control kernel: one fixed-period tick turns (plan request, guard limits,
# grid frequency) into the setpoint sent to the inverter.
#
# Viper, fixed-point ints (W, mHz), state in one preallocated array('i'), no
# allocation per tick. Inputs are clamped first so that every intermediate
# stays inside +-2**29: the boards have 31-bit small ints and 32-bit words.
#
# Order of operations, and why:
#  1. target = request + frequency droop  (grid support rides on the plan)
#  2. target clamped to [lo, hi]           (guard limits)
#  3. setpoint moves toward target by at most one ramp step
#  4. setpoint clamped to [lo, hi] again   (protection beats the ramp: when the
#     guard tightens a limit the setpoint follows at once, never later)
#  STOP set: setpoint 0 at once (fault).
import array
import micropython
from micropython import const

# State array slots. The constants (RAMP_W, NOM_MHZ, DB_MHZ, K_W_PER_HZ) are
# set once from the config when the controller is built; every tick the
# control loop (control.Controller.tick) writes REQ_W from the plan or
# dispatch request, LO_W/HI_W and HZ_MHZ from the guard, FREQ_EN (frequency
# response on, unless the inverter droops by itself: 711) and STOP (guard in
# fault), then calls tick(). Shutdown and internal errors set STOP and tick
# once more, so the published setpoint is 0.
REQ_W = const(0)  # plan/dispatch request, ev_w (+ charge, - discharge)
LO_W = const(1)  # guard: lowest allowed ev_w (<= 0)
HI_W = const(2)  # guard: highest allowed ev_w (>= 0)
RAMP_W = const(3)  # largest setpoint change per tick, W (> 0)
HZ_MHZ = const(4)  # measured grid frequency, mHz; 0 = unknown
NOM_MHZ = const(5)  # nominal grid frequency, mHz
DB_MHZ = const(6)  # droop deadband, mHz
K_W_PER_HZ = const(7)  # droop gain, W per Hz beyond the deadband
FREQ_EN = const(8)  # 1 = frequency response enabled
STOP = const(9)  # 1 = fault: setpoint 0 now
# Outputs.
SP_W = const(10)  # setpoint, ev_w (also the ramp's memory)
TARGET_W = const(11)  # clamped target before the ramp
DROOP_W = const(12)  # frequency response contribution
SLOTS = const(13)

# Bounds that keep the arithmetic inside +-2**29 (see test_kernel.py).
_LIM_W = const(2097152)  # 2**21 W: any request or limit is clamped to this
_MAX_DEV_MHZ = const(5000)
_MAX_DB_MHZ = const(2000)


def new_state():
    return array.array("i", [0] * SLOTS)


@micropython.viper
def tick(s: ptr32) -> int:
    # ptr32 loads are zero-extended on 64-bit ports: sign-extend by hand.
    # (m is built at run time: a 2**31 literal would be a big-int object on
    # 32-bit targets.) `mask` is 2**32-1 on 64-bit and -1 on 32-bit targets.
    m = 1
    m = m << 31
    mask = (m << 1) - 1
    if s[STOP]:
        s[SP_W] = 0
        s[TARGET_W] = 0
        s[DROOP_W] = 0
        return 0
    req = ((s[REQ_W] & mask) ^ m) - m
    lo = ((s[LO_W] & mask) ^ m) - m
    hi = ((s[HI_W] & mask) ^ m) - m
    sp = ((s[SP_W] & mask) ^ m) - m
    step = ((s[RAMP_W] & mask) ^ m) - m
    if req > _LIM_W:
        req = _LIM_W
    if req < 0 - _LIM_W:
        req = 0 - _LIM_W
    if lo < 0 - _LIM_W:
        lo = 0 - _LIM_W
    if lo > 0:
        lo = 0
    if hi > _LIM_W:
        hi = _LIM_W
    if hi < 0:
        hi = 0
    if sp > _LIM_W:
        sp = _LIM_W
    if sp < 0 - _LIM_W:
        sp = 0 - _LIM_W
    if step < 1:
        step = 1
    if step > _LIM_W:
        step = _LIM_W

    # Frequency droop: over-frequency -> more charging, under -> less
    # charging / more export. Gain split in thousands so dev * k stays small.
    droop = 0
    hz = ((s[HZ_MHZ] & mask) ^ m) - m
    if s[FREQ_EN] and hz > 0:
        dev = hz - (((s[NOM_MHZ] & mask) ^ m) - m)
        if dev > _MAX_DEV_MHZ:
            dev = _MAX_DEV_MHZ
        if dev < 0 - _MAX_DEV_MHZ:
            dev = 0 - _MAX_DEV_MHZ
        db = ((s[DB_MHZ] & mask) ^ m) - m
        if db < 0:
            db = 0
        if db > _MAX_DB_MHZ:
            db = _MAX_DB_MHZ
        k = ((s[K_W_PER_HZ] & mask) ^ m) - m
        if k < 0:
            k = 0
        if k > _LIM_W:
            k = _LIM_W
        x = 0
        if dev > db:
            x = dev - db
        elif dev < 0 - db:
            x = 0 - db - dev
        # x <= 7000 mHz, k // 1000 <= 2097: each product < 1.5e7
        mag = x * (k // 1000) + x * (k % 1000) // 1000
        if mag > _LIM_W:
            mag = _LIM_W
        droop = mag if dev > 0 else 0 - mag

    target = req + droop
    if target < lo:
        target = lo
    if target > hi:
        target = hi
    d = target - sp
    if d > step:
        d = step
    if d < 0 - step:
        d = 0 - step
    sp = sp + d
    if sp < lo:
        sp = lo
    if sp > hi:
        sp = hi
    s[SP_W] = sp
    s[TARGET_W] = target
    s[DROOP_W] = droop
    return sp


def droop_gain_w_per_hz(p_ref_w, nominal_hz, droop_pct):
    """Droop s%: a frequency change of s% of nominal moves p_ref_w fully."""
    return int(p_ref_w * 100 / (nominal_hz * droop_pct))
