# The inverter side of one control tick: discovery, the refresh of the
# measurements, the setpoint and its heartbeat. Owned by the control thread,
# which is the only one to talk on the Modbus line (the master is not
# re-entrant); every transaction is bounded by timeout_ms x (1 + retries).
from micropython import const

from v2g import log
from v2g.modbus import ModbusError

# Transactions one tick can make, at most: discovery (3 base addresses, up to
# 64 model headers, common, scale factors, ratings, 711) in the tick that
# rediscovers; else a refresh (701, 713, 714) and a write (WSet, heartbeat).
# With the worst transaction the config allows this bounds a tick.
MAX_TXNS_PER_TICK = const(3 + 64 + 9)


# Per attempt, besides the response timeout: a reconnect of a TCP link
# (hal.tcpstream, 500 ms), the longest frame's wire time (256 bytes at
# 9600 baud: 267 ms) and the drain after a broken frame (modbus._DRAIN_LIMIT_MS).
_ATTEMPT_EXTRA_MS = const(500 + 267 + 50)


def worst_txn_ms(cfg):
    """The longest one Modbus transaction can take under this config: every
    attempt waits its full timeout plus its extras, and a busy device's
    pause (one more timeout) comes between attempts."""
    inv = cfg["inverter"]
    return (inv["retries"] + 1) * (2 * inv["timeout_ms"] + _ATTEMPT_EXTRA_MS)


class Southbound:
    def __init__(self, cfg, clock, inverter, period_ms):
        self.clock = clock
        self.inv = inverter
        self.heartbeat_ms = max(1000, cfg["inverter"]["revert_s"] * 1000 // 3)
        self.probe_every = max(1, 1000 // period_ms)  # rediscovery at ~1 Hz
        self.last_probe_tick = -1000000
        self.last_write_ms = None
        self.hb_count = 0
        self.link_errors = 0
        self.last_link_error = None
        self.discoveries = 0  # bumps when the model map changes (status record)

    def read(self, meas, tick_no, probe=True):
        """Refresh meas; -> True if the inverter answered. Rediscovers a lost
        inverter at ~1 Hz (probe=False: not now, e.g. while stopping)."""
        inv = self.inv
        try:
            if not inv.ready:
                if not probe or tick_no - self.last_probe_tick < self.probe_every:
                    return False
                self.last_probe_tick = tick_no
                inv.discover()
                self.discoveries += 1
                log.event("inverter", {"models": sorted(inv.models), "info": inv.info, "base": inv.base})
            inv.refresh(meas, tick_no)
            return True
        except ModbusError as e:
            self._link_error(e)
            return False

    def _link_error(self, e):
        self.link_errors += 1
        self.last_link_error = type(e).__name__ + ": " + str(e)
        # Rediscover once it answers again: a power-cycled inverter may come
        # back with another map or other scale factors.
        self.inv.ready = False

    def write(self, sp_w, now_ms):
        """WSet when it changed or the heartbeat is due; -> False if the
        link failed."""
        inv = self.inv
        due = self.last_write_ms is None or self.clock.ticks_diff(now_ms, self.last_write_ms) >= self.heartbeat_ms
        if inv.last_wset == sp_w and not due:
            return True
        try:
            inv.write_setpoint(sp_w)
            if due:
                self.hb_count += 1
                inv.heartbeat(self.hb_count)
            self.last_write_ms = now_ms
            return True
        except ModbusError as e:
            self._link_error(e)
            return False

    def zero(self):
        """Best effort 0 W (the inverter's reversion timer covers the case
        where this write cannot get through)."""
        try:
            if self.inv.ready:
                self.inv.write_setpoint(0)
        except ModbusError:
            pass
