"""The grid at the connection point: time-of-use prices and frequency.

Prices follow the site config's tariff format, so the simulator and the
firmware read one and the same table. Frequency is the nominal value plus a
small, smooth, seeded wander (a real grid is never exactly at 50 Hz, and a
controller must not treat that as an event) plus scheduled excursions that
ramp at a physical rate of change rather than stepping.
"""

import math
import random
import time

_NOISE_HZ = 0.020  # the wander stays within +-20 mHz


def _minute_of_day(hhmm):
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class Grid:
    def __init__(self, tariff_periods=(), nominal_hz=50.0, events=(), utc_offset_min=0, seed=0,
                 rocof_hz_per_s=1.0, seasons=None):
        """seasons: the config's tariff.seasons ([{"months": [...],
        "periods": [...]}]); a month none names has tariff_periods."""
        self.nominal_hz = nominal_hz
        self.utc_offset_min = utc_offset_min
        self.rocof_hz_per_s = rocof_hz_per_s
        self.periods = [dict(p) for p in tariff_periods]
        self._spans = [(_minute_of_day(p["start"]), _minute_of_day(p["end"]), p) for p in self.periods]
        self._month_spans = {}
        for season in seasons or ():
            spans = [(_minute_of_day(p["start"]), _minute_of_day(p["end"]), dict(p)) for p in season["periods"]]
            for m in season["months"]:
                self._month_spans[m] = spans
        self.events = [dict(e) for e in events]
        self.override_hz = None  # set_override_hz(): a test pins the frequency
        rng = random.Random(seed)
        # Three sines with incommensurate periods: deterministic, continuous,
        # and their amplitudes add up to the bound, so it is never exceeded.
        shares = (0.45, 0.35, 0.20)
        periods_s = (rng.uniform(20, 60), rng.uniform(120, 600), rng.uniform(900, 3600))
        self._noise = [(_NOISE_HZ * a, p, rng.uniform(0, 2 * math.pi)) for a, p in zip(shares, periods_s)]

    # ---- tariff ---------------------------------------------------------------

    def local_minute(self, sim_unix_s):
        return (int(sim_unix_s // 60) + self.utc_offset_min) % 1440

    def spans(self, sim_unix_s):
        """The periods of the season of that instant's local month."""
        if not self._month_spans:
            return self._spans
        month = time.gmtime(int(sim_unix_s) + self.utc_offset_min * 60).tm_mon
        return self._month_spans.get(month, self._spans)

    def period(self, sim_unix_s):
        """The tariff period in force at that instant (a dict from the config)."""
        minute = self.local_minute(sim_unix_s)
        for start, end, period in self.spans(sim_unix_s):
            if start < end:
                inside = start <= minute < end
            else:  # wraps past midnight; start == end covers the whole day
                inside = minute >= start or minute < end
            if inside:
                return period
        raise LookupError("no tariff period covers local minute %d" % minute)

    def price(self, sim_unix_s):
        """(import, export) price per kWh at that instant."""
        period = self.period(sim_unix_s)
        return period["import"], period["export"]

    def cheapest_import(self, sim_unix_s):
        """The cheapest import price of that instant's season."""
        return min(p["import"] for _, _, p in self.spans(sim_unix_s))

    # ---- frequency ------------------------------------------------------------

    def set_override_hz(self, hz):
        """Pin the frequency (None gives it back to the noise and events)."""
        self.override_hz = hz

    def noise_hz(self, sim_unix_s):
        return sum(a * math.sin(2 * math.pi * sim_unix_s / p + phase) for a, p, phase in self._noise)

    def _event_offset_hz(self, sim_unix_s):
        offset = 0.0
        for event in self.events:
            into_s = sim_unix_s - event["start"]
            left_s = event["start"] + event["dur_s"] - sim_unix_s
            if into_s <= 0 or left_s <= 0:
                continue
            step_hz = event["hz"] - self.nominal_hz
            ramp_s = event.get("ramp_s", abs(step_hz) / self.rocof_hz_per_s)
            share = 1.0 if ramp_s <= 0 else min(1.0, into_s / ramp_s, left_s / ramp_s)
            offset += step_hz * share
        return offset

    def freq_hz(self, sim_unix_s):
        if self.override_hz is not None:
            return self.override_hz
        return self.nominal_hz + self.noise_hz(sim_unix_s) + self._event_offset_hz(sim_unix_s)
