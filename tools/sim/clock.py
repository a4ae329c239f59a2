"""Simulated time shared by the simulator and the firmware.

Both processes evaluate the same formula from the same three numbers:
    sim_s = sim_epoch + (time.time() - real_epoch) * warp
The firmware reads them from the V2G_CLOCK environment variable as
"warp,real_epoch_ms,sim_epoch_ms" (firmware/v2g/clock.py). The epochs are kept
in whole milliseconds here too, so to_env() loses nothing and both sides agree
to the millisecond.
"""

import time


class WarpClock:
    def __init__(self, warp=1.0, real_epoch=None, sim_epoch=None):
        if warp <= 0:
            raise ValueError("warp must be > 0")
        now = time.time()
        self.warp = warp
        self.real_epoch_ms = round((now if real_epoch is None else real_epoch) * 1000)
        self.sim_epoch_ms = round((self.real_epoch_ms / 1000 if sim_epoch is None else sim_epoch) * 1000)

    @property
    def real_epoch(self):
        return self.real_epoch_ms / 1000

    @property
    def sim_epoch(self):
        return self.sim_epoch_ms / 1000

    def now(self):
        """Simulated unix time, float seconds."""
        real_ms = time.time() * 1000
        return (self.sim_epoch_ms + (real_ms - self.real_epoch_ms) * self.warp) / 1000

    def real_s(self, sim_s):
        """How many wall seconds `sim_s` of simulated time take."""
        return sim_s / self.warp

    def to_env(self):
        warp = "%d" % self.warp if float(self.warp).is_integer() else repr(float(self.warp))
        return "%s,%d,%d" % (warp, self.real_epoch_ms, self.sim_epoch_ms)

    @classmethod
    def from_env(cls, spec):
        parts = spec.split(",")
        if len(parts) != 3:
            raise ValueError("clock spec must be 'warp,real_epoch_ms,sim_epoch_ms', got %r" % spec)
        return cls(float(parts[0]), int(parts[1]) / 1000, int(parts[2]) / 1000)


class ManualClock:
    """A clock that moves only when told to: for tests that step the physics."""

    def __init__(self, now_s=0.0):
        self._now_s = float(now_s)

    def now(self):
        return self._now_s

    def set(self, now_s):
        self._now_s = float(now_s)

    def advance(self, dt_s):
        self._now_s += dt_s
        return self._now_s
