# One clock for control, plan and reports: monotonic ticks and wall time.
#
# On a board, ticks are time.ticks_ms() and wall time is the RTC, which
# nothing sets until SNTP answers (v2g.timesync, run by the cloud thread
# once the network is up): a board boots at 2000-01-01. Until the wall time
# is trusted, nothing that needs it runs (no saved dispatch, no dispatch
# command, no tariff plan: the controller only charges toward the
# departure target and never exports).
# On the unix port a warped clock runs faster than real time, so a simulated
# day takes a minute; the simulator (tools/sim/clock.py) evaluates the same
# formula from the same parameters, so both processes agree on "now":
#     sim_ms = sim_epoch_ms + (real_ms - real_epoch_ms) * warp
# The parameters come as "warp,real_epoch_ms,sim_epoch_ms" (env V2G_CLOCK).
#
# Unix seconds do not fit the boards' 31-bit small ints (2**30 s is in
# 2004): every time() there allocates a big int. So the control loop keeps
# time as seconds since FW_EPOCH_UNIX (2026-01-01 UTC; small until 2060)
# derived from ticks, reads the wall clock only every few seconds to follow
# it, and converts to unix seconds only at the edges (records, commands).
#
# Transport timeouts (Modbus, sockets) stay in real time: they are physics.
import time

from micropython import const

# Boards whose RTC epoch is 2000-01-01 report gmtime(0) as year 2000.
_EPOCH_OFFSET_S = 946684800 if time.gmtime(0)[0] == 2000 else 0
# time.ticks_* work modulo a port-specific period; keep warped ticks in it.
_TICKS_MASK = time.ticks_add(0, -1)
# The firmware's own epoch, a UTC midnight (local_minute works on it as on
# unix seconds) and a date this firmware cannot run before: a wall clock
# earlier than it has not been set.
FW_EPOCH_UNIX = 1767225600


class Clock:
    """Real time: the board's own ticks and RTC."""

    warp = 1

    def ticks_ms(self):
        return time.ticks_ms()

    def ticks_diff(self, a, b):
        return time.ticks_diff(a, b)

    def ticks_add(self, a, b):
        return time.ticks_add(a, b)

    wall_set_s = 0  # correction from SNTP, s (on the unix port the OS clock can't be set)
    wall_reads = 0  # time() calls: each is a big int on a 32-bit board

    def _raw_s(self):
        return int(time.time()) + _EPOCH_OFFSET_S

    def time(self):
        """Wall time, unix seconds (int)."""
        self.wall_reads += 1
        return self._raw_s() + self.wall_set_s

    def trusted(self):
        """Is the wall time known (set by the OS, the RTC or SNTP)?"""
        return self.time() >= FW_EPOCH_UNIX

    def set_wall(self, unix_s):
        """Wall time from SNTP: the RTC on a board (it survives a soft
        reset), an offset on the unix port. Returns the step in s."""
        step = unix_s - self.time()
        try:
            import machine

            tm = time.gmtime(unix_s - _EPOCH_OFFSET_S)
            machine.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))
            step_left = unix_s - self.time()
            if -2 <= step_left <= 2:
                return step
        except (ImportError, AttributeError, OSError):
            pass
        self.wall_set_s += unix_s - self.time()
        return step

    def sleep_ms(self, ms):
        if ms > 0:
            time.sleep_ms(ms)


class WarpClock(Clock):
    """Simulated time running `warp` times faster than real time."""

    def __init__(self, warp, real_epoch_ms, sim_epoch_ms):
        if warp <= 0:
            raise ValueError("warp must be > 0")
        self.warp = warp
        self._real0 = real_epoch_ms
        self._sim0 = sim_epoch_ms

    def _sim_ms(self):
        real_ms = time.time_ns() // 1000000
        return self._sim0 + int((real_ms - self._real0) * self.warp)

    def ticks_ms(self):
        return self._sim_ms() & _TICKS_MASK

    def _raw_s(self):
        return self._sim_ms() // 1000

    def set_wall(self, unix_s):
        # simulated time: an offset, like the unix port's OS clock
        step = unix_s - self.time()
        self.wall_set_s += step
        return step

    def sleep_ms(self, ms):
        if ms > 0:
            us = int(ms * 1000 / self.warp)
            if us > 0:
                time.sleep_us(us)


_WALL_CHECK_S = const(5)  # how often the control loop reads the wall clock
_WALL_JUMP_S = const(2)  # a wall step larger than this is a jump: replan


class Follower:
    """The control loop's time. mono_s: seconds since start, from the
    ticks, never steps. now_fw_s: wall time as seconds since FW_EPOCH_UNIX,
    mono_s plus an offset followed with one wall read every _WALL_CHECK_S,
    or None while the wall clock is not set. Small ints only (but for that
    one read). Its own object: the controller's attribute table stays
    small (one block at boot, when the heap is tightest)."""

    def __init__(self, clock):
        self.clock = clock
        self.mono_s = 0
        self.rem_ms = 0
        self.last_ms = None
        self.next_check_s = 0
        self.off_s = None  # now_fw_s - mono_s

    def step(self, now_ms):
        """-> (now_fw_s or None, what changed: None, "clock_set",
        "clock_jump" or "clock_lost", step in s or None)."""
        if self.last_ms is not None:
            r = self.rem_ms + self.clock.ticks_diff(now_ms, self.last_ms)
            if r >= 1000:
                self.mono_s += r // 1000
                r %= 1000
            self.rem_ms = r
        self.last_ms = now_ms
        what = by_s = None
        clk = self.clock
        if self.mono_s >= self.next_check_s:
            # the wall read is bracketed by two tick reads: this thread may
            # be preempted around it (at x2880 simulated time 1 ms is 3 s),
            # and that lag is no step of the wall clock. A read that took
            # a second or more is tried again at the next tick.
            m0 = clk.ticks_ms()
            t = clk.time()
            if clk.ticks_diff(clk.ticks_ms(), m0) >= 1000:
                off = self.off_s
                return (None if off is None else self.mono_s + off), None, None
            self.next_check_s = self.mono_s + _WALL_CHECK_S
            lag_s = clk.ticks_diff(m0, now_ms) // 1000
            was = self.off_s
            if t < FW_EPOCH_UNIX:
                if was is not None:
                    what = "clock_lost"
                self.off_s = None
            else:
                off = t - lag_s - FW_EPOCH_UNIX - self.mono_s
                if was is None:
                    what = "clock_set"
                elif not -_WALL_JUMP_S <= off - was <= _WALL_JUMP_S:
                    what, by_s = "clock_jump", off - was
                self.off_s = off
        off = self.off_s
        return (None if off is None else self.mono_s + off), what, by_s


def parse(spec):
    """'warp,real_epoch_ms,sim_epoch_ms' -> WarpClock."""
    parts = spec.split(",")
    if len(parts) != 3:
        raise ValueError("clock spec must be warp,real_epoch_ms,sim_epoch_ms")
    return WarpClock(float(parts[0]), int(parts[1]), int(parts[2]))


def from_env():
    """The warped clock named by V2G_CLOCK on the unix port, else real time."""
    try:
        import os

        spec = os.getenv("V2G_CLOCK")
    except (ImportError, AttributeError):
        spec = None
    return parse(spec) if spec else Clock()


def local_minute(clock_or_unix_s, utc_offset_min):
    """Minutes after local midnight."""
    t = clock_or_unix_s if isinstance(clock_or_unix_s, int) else clock_or_unix_s.time()
    return ((t // 60) + utc_offset_min) % 1440


# Day of the year on which each month starts, in a common and a leap year.
_MONTH_START = (0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365)


def local_month(t_s, utc_offset_min):
    """1..12: the local month of t_s, seconds since 1970-01-01 or since
    FW_EPOCH_UNIX (2026-01-01): both are 1 January of a year two after a
    leap year, so one four-year cycle (365, 365, 366, 365 days) serves both,
    and in integers, whose days count stays a small int on a board. Right
    until 2100, the first year of that cycle that is not leap."""
    d = (t_s + utc_offset_min * 60) // 86400 % 1461
    leap = 0
    if d >= 730:  # past the two common years
        d -= 730
        if d < 366:
            leap = 1
        else:
            d -= 366
    elif d >= 365:
        d -= 365
    m = 1
    while m < 12 and d >= _MONTH_START[m] + (leap if m >= 2 else 0):
        m += 1
    return m


def hhmm_to_min(text):
    """'HH:MM' -> minutes after midnight; ValueError with the rule broken."""
    if not isinstance(text, str) or len(text) != 5 or text[2] != ":":
        raise ValueError('must be "HH:MM"')
    hh, mm = text[:2], text[3:]
    if not (hh.isdigit() and mm.isdigit()):
        raise ValueError('must be "HH:MM"')
    h, m = int(hh), int(mm)
    if h > 23 or m > 59:
        raise ValueError('must be "HH:MM" with HH 00-23 and MM 00-59')
    return h * 60 + m


def min_to_hhmm(m):
    return "%02d:%02d" % (m // 60, m % 60)
