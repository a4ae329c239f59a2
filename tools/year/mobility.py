"""When the owner drives: a year of trips drawn from published statistics.

The distributions are emobpy's (DIW Berlin, MIT licence, 0.6.2 from PyPI,
installed for its data only: its code needs pandas < 2), which it took from
the German national travel survey "Mobilitaet in Deutschland 2017":
  - TripsPerDay.csv: how many trips a driver makes in a day, weekday and
    weekend columns (0 trips: the car stays home);
  - DepartureDestinationTrip_Worker.csv: per half hour and day of the week,
    the probability that a trip starts then, by destination (home,
    workplace, shopping, leisure, errands, escort);
  - DistanceDurationTrip.csv: the joint probability of a trip's distance
    (km) and duration (min);
  - rules.yml of its example 1: a full-time worker spends at least 7 h at
    the workplace.
Days off are weekends and China's public holidays (the `holidays` package),
and the weekend days China works to make up for them are working days.

A working day with a departure in the firmware's config: the owner leaves
at that minute (the firmware's own departure: the schedule is the owner's
word) for the workplace and comes home at a time drawn from the "home"
column at least 7 h later; the trip out and back is one draw of distance
each way. When the day's draw from TripsPerDay has more trips than the
commute's two, or on a day off with any, an outing starts at a random
moment drawn from the shopping, leisure, errands and escort columns: the
firmware was not told, these are the "unexpected trips" the reserve
exists for.

Two inputs are this tool's, not the survey's: the car's consumption,
0.18 kWh/km at the wheels and the socket (a mid-size BEV's year-round
figure, heating and air-conditioning included), and how long an outing
stays at its destination (uniform 0.5 to 2 h).
"""
import csv
import datetime
import importlib.util
import random
import re
from pathlib import Path

KWH_PER_KM = 0.18
OUTING_STAY_H = (0.5, 2.0)
MIN_AT_WORK_H = 7.0  # emobpy example 1 rules.yml: fulltime, overall_min_time_at workplace
_OUTING = ("shopping", "leisure", "errands", "escort")
_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def emobpy_data():
    """emobpy's base statistics directory, found without importing emobpy."""
    spec = importlib.util.find_spec("emobpy")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("emobpy is not installed (make setup installs its data)")
    return Path(spec.submodule_search_locations[0]) / "data" / "eg1" / "config_files"


class Survey:
    """The three tables, read once."""

    def __init__(self, data_dir=None):
        d = Path(data_dir or emobpy_data())
        with open(d / "TripsPerDay.csv") as f:
            rows = list(csv.DictReader(f))
        self.trips = {kind: ([int(r["trip"]) for r in rows], [float(r[kind]) for r in rows])
                      for kind in ("weekday", "weekend")}
        with open(d / "DistanceDurationTrip.csv") as f:
            r = list(csv.reader(f))
        minutes = [int(x) for x in r[0][1:]]
        self.dist = []  # (km, min, p)
        for row in r[1:]:
            for m, p in zip(minutes, row[1:]):
                if float(p) > 0:
                    self.dist.append((float(row[0]), m, float(p)))
        with open(d / "DepartureDestinationTrip_Worker.csv") as f:
            self.depart = {}  # (day, column) -> [(hour, p)]
            for row in csv.DictReader(f):
                for col, p in row.items():
                    if col not in ("days", "time"):
                        self.depart.setdefault((row["days"], col), []).append((float(row["time"]), float(p)))

    def n_trips(self, rng, day_off):
        values, weights = self.trips["weekend" if day_off else "weekday"]
        return rng.choices(values, weights)[0]

    def leg(self, rng):
        """One trip: (km, minutes)."""
        km, m, _ = rng.choices(self.dist, [p for _, _, p in self.dist])[0]
        return km, m

    def start_hour(self, rng, day, columns, after_h=0.0, before_h=24.0):
        """A half-hour slot drawn from the columns' probabilities, within
        [after_h, before_h); None when the survey has none there."""
        w = {}
        for col in columns:
            for h, p in self.depart.get((day, col), ()):
                if after_h <= h < before_h:
                    w[h] = w.get(h, 0.0) + p
        if not w or sum(w.values()) <= 0:
            return None
        hours = sorted(w)
        return rng.choices(hours, [w[h] for h in hours])[0] + rng.random() * 0.5


def china_days_off(years):
    """(days off, weekend days worked): China's public holidays and the
    weekend days the holiday rules make working days ("substituted from")."""
    import holidays

    off, worked = set(), set()
    for day, name in holidays.China(years=years).items():
        off.add(day)
        m = re.search(r"substituted from (\d\d)/(\d\d)/(\d{4})", name)
        if m:
            worked.add(datetime.date(int(m.group(3)), int(m.group(1)), int(m.group(2))))
    return off, worked


# make sim's day: the cloud side's first dispatch is at 18:00, so the
# commute is drawn home before it (the evening peak meets a car that has
# just come home), and there is no outing (the evening is the dispatches')
SIM_DAY_HOME_BY_H = 17.75


def sim_day_trips(site, date, seed=1):
    """The owner's trips on make sim's day (site: the config as written)."""
    return year_trips(date, 1, site.get("utc_offset_min", 0), departure_min_on_raw(site), seed=seed,
                      home_by_h=SIM_DAY_HOME_BY_H, outings=False)


def departure_min_on_raw(site):
    """departure_min_on for a site config as written (CONTRACT sections 2
    and 8: departure.time, departure.schedule)."""
    def minute(text):
        hh, mm = text.split(":")
        return int(hh) * 60 + int(mm)

    dep = site["departure"]
    sched = dep.get("schedule") or {}
    days = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

    def on(weekday):
        d = days[weekday]
        if d not in sched:
            return minute(dep["time"])
        return None if sched[d] is None else minute(sched[d])

    return on


def year_trips(start, days, utc_offset_min, departure_min_on, seed=1, survey=None, home_by_h=23.5,
               outings=True):
    """Trips for `days` days from the local date `start`.
    departure_min_on(weekday 0 = Monday) -> the firmware's departure minute
    that day, or None. home_by_h: the commute's return is drawn before this
    local hour; outings False: none (make sim's day, whose evening belongs
    to the cloud's dispatches). -> list of dicts in time order:
      {"leave_s", "back_s", "wh", "km", "kind": "departure" | "unexpected"}"""
    survey = survey or Survey()
    rng = random.Random(seed)
    off, worked = china_days_off(range(start.year, (start + datetime.timedelta(days)).year + 1))
    out = []
    for i in range(days):
        date = start + datetime.timedelta(i)
        wd = date.weekday()
        day_off = (wd >= 5 and date not in worked) or date in off
        midnight_s = int(datetime.datetime(date.year, date.month, date.day, tzinfo=datetime.timezone.utc)
                         .timestamp()) - utc_offset_min * 60
        n = survey.n_trips(rng, day_off)
        busy_until_h = 0.0
        dep_min = departure_min_on(wd)
        if not day_off and dep_min is not None:
            # the commute, leaving when the firmware expects it
            leave_h = dep_min / 60  # exact in seconds below: dep_min * 60
            km, leg_min = survey.leg(rng)
            drive_h = leg_min / 60
            back_h = survey.start_hour(rng, _DAYS[wd], ("home",), leave_h + drive_h + MIN_AT_WORK_H,
                                       home_by_h - drive_h)
            if back_h is None:
                back_h = min(home_by_h - drive_h, leave_h + drive_h + MIN_AT_WORK_H)
            back_h += drive_h  # the drive home
            trip = _trip(midnight_s, leave_h, back_h, 2 * km, "departure")
            trip["leave_s"] = midnight_s + dep_min * 60
            out.append(trip)
            busy_until_h = back_h
            n -= 2  # the survey's day counts the commute's two trips among its own
        if outings and n > 0:
            # an outing the firmware was not told about
            start_h = survey.start_hour(rng, _DAYS[wd], _OUTING, busy_until_h + 0.5, 22.0)
            if start_h is not None:
                km, leg_min = survey.leg(rng)
                stay_h = rng.uniform(*OUTING_STAY_H)
                back_h = min(23.9, start_h + 2 * leg_min / 60 + stay_h)
                out.append(_trip(midnight_s, start_h, back_h, 2 * km, "unexpected"))
    return out


def _trip(midnight_s, leave_h, back_h, km, kind):
    return {"leave_s": midnight_s + int(leave_h * 3600), "back_s": midnight_s + int(back_h * 3600),
            "km": km, "wh": km * KWH_PER_KM * 1000, "kind": kind}
