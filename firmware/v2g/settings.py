# The owner's run-time settings: reserve, departure and mode, in one object.
#
# Owned by the control thread: it is created with the control loop, changed
# only by actions the loop applies at a tick (a cloud command, a technician,
# settings.json at boot), and read by the guard (reserve and departure SoC
# as limits) and the plan (reserve, departure time and SoC). Other threads
# see its values in the published status record, never this object.
#
# Every change bumps `version`; the plan compares it with the version it was
# computed from, so a new reserve or departure replans at the next tick and
# nobody reaches into the plan's internals.

USER_MODES = ("auto", "idle", "charge_now")


def cpct(pct):
    """% (a config or command number) -> 0.01 % as an int, rounded."""
    return int(pct * 100 + 0.5)


class Settings:
    def __init__(self, cfg):
        # each value in 0.01 % (the guard's unit) and in % (the plan's), both
        # set here: reading either in a tick allocates nothing (a float made
        # per read would, on every board)
        self.reserve_cpct = self.reserve_pct = None
        self.dep_cpct = self.dep_pct = None
        self._reserve(cfg["battery"]["reserve_pct"])
        dep = cfg["departure"]
        self.dep_min = dep["time"]  # minute of the local day
        # per weekday (Monday first): a minute, None (no departure) or -1
        # (dep_min); None when there is no departure.schedule
        self.week_min = dep["week_min"]
        self._dep_soc(dep["soc_pct"])
        self.mode = "auto"
        self.version = 0

    def _reserve(self, pct):
        self.reserve_cpct = cpct(pct)
        self.reserve_pct = self.reserve_cpct / 100

    def _dep_soc(self, pct):
        self.dep_cpct = cpct(pct)
        self.dep_pct = self.dep_cpct / 100

    def dep_min_on(self, weekday):
        """The departure minute on a weekday (0 = Monday), or None: no
        departure that day. Days the schedule leaves out follow dep_min,
        which set_departure changes (departure.time's meaning)."""
        w = self.week_min
        m = self.dep_min if w is None else w[weekday]
        return self.dep_min if m == -1 else m

    def set_reserve(self, pct):
        self._reserve(pct)
        self.version += 1

    def set_departure(self, minute, soc_pct):
        if not 0 <= minute < 1440:
            raise ValueError("departure minute %d" % minute)
        self.dep_min = minute
        self._dep_soc(soc_pct)
        self.version += 1

    def set_mode(self, mode):
        if mode not in USER_MODES:
            raise ValueError(mode)
        self.mode = mode
        self.version += 1
