# What crosses between the control thread and the others, and nothing else.
#
# Who owns what: the control thread owns the inverter, the vehicle bus, the
# guard, the plan and the settings (v2g.control). The cloud thread and the
# technician's REPL helpers never touch those objects: they read the status
# record the control loop publishes once per tick, post actions into the
# inbox (applied at the next tick) and take telemetry samples and events.
# On an RP2040 the control loop runs on the second core with no GIL, so this
# boundary is what keeps the two cores from reading half-written state: each
# structure here is guarded by its own lock, and a reader always gets a copy.
import _thread

import array
import time

import micropython
from micropython import const

from v2g.clock import FW_EPOCH_UNIX

_JITTER_RING = const(256)  # last tick start delays kept for p50/p99/max (51 s at 200 ms)
# a delay is kept clamped to +-(2**29 - 1) us (9 minutes): the bounds and
# their sum stay small ints on the boards' 31-bit ints
_JIT_LIM_US = const(0x1FFFFFFF)


class Mailbox:
    """A bounded list shared between the control thread and the others.
    put() (events): when full the oldest item goes and `dropped` counts it.
    offer() (actions for the control loop): never drops; an item goes only
    into free room, or into a slot that reserve() held for it."""

    def __init__(self, size):
        self.size = size
        self.items = []
        self.dropped = 0
        self.held = 0  # slots reserved, not yet filled
        self.offered = 0  # items offer() queued: the number of the last one
        self.lock = _thread.allocate_lock()

    def put(self, item):
        with self.lock:
            self.items.append(item)
            if len(self.items) > self.size:
                self.items.pop(0)
                self.dropped += 1

    def reserve(self):
        """Hold a slot for a later offer(item, True); False when full."""
        with self.lock:
            if len(self.items) + self.held >= self.size:
                return False
            self.held += 1
            return True

    def release(self):
        """Give back a slot reserve() held and nothing will fill."""
        with self.lock:
            self.held -= 1

    def offer(self, item, reserved=False, force=False):
        """Queue item: -> its number (1, 2, ...), or 0 when there is no
        room (nothing queued). reserved: into the slot reserve() held.
        force: even into a full box (the stop request, which must never
        wait behind a flood of commands)."""
        with self.lock:
            if reserved:
                self.held -= 1
            elif not force and len(self.items) + self.held >= self.size:
                return 0
            self.items.append(item)
            self.offered += 1
            return self.offered

    def take(self):
        """Everything queued, oldest first (an empty tuple, allocating
        nothing, when there is nothing: the control loop asks every tick)."""
        with self.lock:
            items = self.items
            if not items:
                return ()
            self.items = []
        return items


_TM_FIELDS = const(6)  # ts, soc_cpct, ev_w, hz_mhz, wh_in, wh_out
_TM_NONE = const(-0x3FFFFFFF)  # "not read": a small int on every port


def int_array(n):
    """n 32-bit slots (contents unset) in one allocation: from a range the
    length is known up front, where bytes(4 * n) would be a second buffer
    as large, at boot, when the heap is tightest."""
    return array.array("i", range(n))


_TM_RING = const(64)  # telemetry samples between the threads
_early = []  # the loop's int rings, made by early_buffers() at boot


def early_buffers():
    """Make the control loop's rings (2.5 KB in two blocks) first thing at
    boot, while the heap is whole: after the config validator's garbage
    the heap may hold enough bytes but no 1.5 KB block."""
    if not _early:
        _early.append(int_array(_TM_FIELDS * _TM_RING))
        _early.append(int_array(_JITTER_RING))


def _ring(n):
    """n int slots: one early_buffers() made, else a new one."""
    for i in range(len(_early)):
        if len(_early[i]) == n:
            return _early.pop(i)
    return int_array(n)


class SampleRing:
    """Telemetry samples from the control thread to the cloud thread, in a
    ring of ints allocated once: a sample leaves no garbage in the control
    thread, and a cloud thread stalled in a TLS handshake costs no heap
    either (a list of tuples of floats there was the peak of the day).
    When full the oldest goes and `dropped` counts it."""

    def __init__(self, size):
        self.size = size
        self.buf = _ring(_TM_FIELDS * size)
        self.first = 0
        self.n = 0
        self.dropped = 0
        self.lock = _thread.allocate_lock()

    def put(self, fw_s, soc_cpct, ev_w, hz_mhz, wh_in, wh_out):
        """fw_s: seconds since FW_EPOCH_UNIX (every field fits 32 bits, half
        the RAM of 64-bit slots, until 2094), None while the clock is unset."""
        with self.lock:
            if self.n == self.size:
                self.first = (self.first + 1) % self.size
                self.n -= 1
                self.dropped += 1
            i = (self.first + self.n) % self.size * _TM_FIELDS
            b = self.buf
            b[i] = _TM_NONE if fw_s is None else fw_s
            b[i + 1] = _TM_NONE if soc_cpct is None else soc_cpct
            b[i + 2] = _TM_NONE if ev_w is None else ev_w
            b[i + 3] = _TM_NONE if hz_mhz is None else hz_mhz
            b[i + 4] = _TM_NONE if wh_in is None else wh_in
            b[i + 5] = _TM_NONE if wh_out is None else wh_out
            self.n += 1

    def take_dropped(self):
        """Samples lost since the last call (and counting starts again)."""
        with self.lock:
            n = self.dropped
            self.dropped = 0
        return n

    def pop(self):
        """The oldest sample as a telemetry record (CONTRACT units), or None."""
        with self.lock:
            if not self.n:
                return None
            i = self.first * _TM_FIELDS
            v = [None if x == _TM_NONE else x for x in self.buf[i:i + _TM_FIELDS]]
            self.first = (self.first + 1) % self.size
            self.n -= 1
        return {"ts": None if v[0] is None else v[0] + FW_EPOCH_UNIX, "soc_pct": None if v[1] is None else v[1] / 100, "ev_w": v[2],
                "grid_hz": None if v[3] is None else v[3] / 1000, "wh_in": v[4], "wh_out": v[5]}




# The status record's fields. Values are ints, short strings, None or
# tuples the control thread never mutates (it replaces them), so publishing
# stores references into a dict made once: the tick allocates nothing, and a
# reader's copy holds the values of one tick.
FIELDS = (
    "tick_no", "fw_s", "mode", "reason", "mode_seq", "guard_state", "fault", "latched",
    "soc_cpct", "ev_w", "setpoint_w", "req_w", "lo_w", "hi_w", "hz_mhz", "wh_in", "wh_out",
    "reserve_cpct", "dep_min", "dep_cpct", "user_mode", "dispatch",
    "link_ok", "inv_ready", "inv_models", "link_errors", "last_link_error",
    "overruns", "internal_errors", "actions_applied", "fault_log", "stopped",
    "vehicle", "plugged", "v_soc_cpct", "v_charge_limit_w", "v_discharge_limit_w", "v_fault",
)


class StatusRecord:
    """What the control loop publishes once per tick (under `lock`, see
    Controller._publish) and the other threads read with read(): a copy,
    all fields from the same tick. Also the tick start delays, written by
    the control loop and copied out for tick_stats()."""

    def __init__(self):
        self.lock = _thread.allocate_lock()
        self.d = {k: None for k in FIELDS}
        self.jitter_us = _ring(_JITTER_RING)
        self.jitter_n = 0
        # over the whole run: the earliest start (a negative delay would be
        # a tick that started before its time) and the shortest interval
        # between two tick starts
        self.min_delay_us = None
        self.min_interval_us = None
        self._last_start_us = None

    def read(self, into=None):
        """A copy of the last record. into: a dict this reader made once by
        an earlier read(), refilled in place; a copy of 38 fields is one
        750-byte block on a 64-bit port, which a heap fragmented late in the
        day may no longer have at every state publish."""
        with self.lock:
            if into is None:
                return dict(self.d)
            into.update(self.d)  # the same keys: no new table
            return into

    def field(self, name):
        """One field of the last record (no copy of the rest)."""
        with self.lock:
            return self.d[name]

    def note_delay(self, late_us, start_us):
        """A tick starts late_us after its scheduled time, at start_us
        (time.ticks_us())."""
        late_us = max(-_JIT_LIM_US, min(_JIT_LIM_US, late_us))
        with self.lock:
            self.jitter_us[self.jitter_n % _JITTER_RING] = late_us
            self.jitter_n += 1
            if self.min_delay_us is None or late_us < self.min_delay_us:
                self.min_delay_us = late_us
            last = self._last_start_us
            if last is not None:
                iv = time.ticks_diff(start_us, last)
                if self.min_interval_us is None or iv < self.min_interval_us:
                    self.min_interval_us = iv
            self._last_start_us = start_us

    def tick_stats(self):
        """Tick start delay in ms over the last ticks: (p50, p99, max, count,
        min, shortest interval between starts), the last two over the whole
        run (the interval None before the second tick), or None.
        Nothing is copied or sorted: each order statistic is a bisection
        over the values, counted in place under the lock (about 90 viper
        passes over 256 ints, well under a millisecond on a board). A 1 KB
        copy was the allocation that failed first, in the stop summary, in
        a heap fragmented by a day with TLS."""
        with self.lock:
            n = min(self.jitter_n, _JITTER_RING)
            if not n:
                return None
            buf = self.jitter_us
            p50, p99, top = _kth(buf, n, n // 2), _kth(buf, n, min(n - 1, n * 99 // 100)), _kth(buf, n, n - 1)
            lo, iv = self.min_delay_us, self.min_interval_us
        return (p50 / 1000, p99 / 1000, top / 1000, n, lo / 1000, None if iv is None else iv / 1000)


@micropython.viper
def _count_le(buf: ptr32, n: int, x: int) -> int:
    """How many of buf[0:n] are <= x."""
    # ptr32 loads are zero-extended on 64-bit ports: sign-extended here as
    # in kernel.tick (`mask` is 2**32-1 on 64-bit, -1 on 32-bit targets)
    m = 1
    m = m << 31
    mask = (m << 1) - 1
    c = 0
    i = 0
    while i < n:
        if ((buf[i] & mask) ^ m) - m <= x:
            c += 1
        i += 1
    return c


def _kth(buf, n, k):
    """The k-th smallest (from 0) of buf[0:n], values within +-_JIT_LIM_US:
    the smallest v with more than k values <= v."""
    lo = -_JIT_LIM_US - 1  # fewer than k + 1 values are <= lo
    hi = _JIT_LIM_US  # all n are <= hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _count_le(buf, n, mid) > k:
            hi = mid
        else:
            lo = mid
    return hi


def state_of(r):
    """A status record (a read() copy) -> the CONTRACT section 4 `state`."""
    soc = r["soc_cpct"]
    fw_s = r["fw_s"]
    hz = r["hz_mhz"]
    snap = {
        "ts": None if fw_s is None else fw_s + FW_EPOCH_UNIX,
        "clock_set": fw_s is not None,
        "mode": r["mode"],
        "soc_pct": None if soc is None else soc / 100,
        "ev_w": r["ev_w"],
        "setpoint_w": r["setpoint_w"],
        "reserve_pct": r["reserve_cpct"] / 100,
        "grid_hz": None if hz is None else hz / 1000,
        "fault": r["fault"],
        "reason": r["reason"],
        "wh_in": r["wh_in"],
        "wh_out": r["wh_out"],
        "plugged": r["plugged"] is True,
    }
    # 13 keys in the literal: one 17-slot table, room for a vehicle key and
    # the three an event record adds (log.record) without growing it
    if r["vehicle"] is not None:
        snap["vehicle"] = r["vehicle"]
    return snap


class Shared:
    """The control loop's port to the other threads: the only object the
    cloud link, the commands and the technician's helpers are given."""

    def __init__(self):
        self.inbox = Mailbox(16)  # actions in, applied at the next tick
        self.events = Mailbox(64)  # event records out
        self.telemetry = SampleRing(_TM_RING)  # samples out
        self.status = StatusRecord()
        # Ctrl-C that landed in the control thread, handed to the main thread
        # (a one-word flag: set there, cleared by the cloud loop)
        self.interrupted = False

    def post(self, action, reserved=False):
        """Queue an action for the control loop, applied at its next tick,
        never dropped. -> its number (applied once the record's
        `actions_applied` reaches it), or 0 when the inbox is full: nothing
        was queued, ask again after a tick. reserved: into a slot held by
        inbox.reserve()."""
        return self.inbox.offer(action, reserved)

    def request_stop(self):
        """A clean stop: the control loop writes 0 W, ends the vehicle
        session and returns from run(). Never refused."""
        return self.inbox.offer(("stop",), force=True)

    def read(self, into=None):
        return self.status.read(into)
