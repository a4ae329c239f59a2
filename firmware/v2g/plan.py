# Plan: when to charge and when to export, from the time-of-use tariff and the
# owner's departure.
#
# The horizon runs from now to the next departure (minus a buffer, so a late
# taper or a slow start cannot make the car miss it). It is cut into segments
# at tariff boundaries; each segment gets an energy budget that is spread
# evenly over it: the lowest power that does the job, which is the gentlest
# on the battery. Recomputed every replan_s and whenever asked, from the
# measured SoC, so errors never accumulate.
#
# Allocation, in order:
#  1. Below the reserve: charge at once, earliest segments first.
#  2. Departure: enough charge for departure.soc_pct, cheapest segments first
#     (the latest among equals: less time at high SoC).
#  3. Arbitrage, greedy by margin per battery kWh:
#       export at a, recharge later at b:  q_a*eta_d - p_b/eta_c - wear
#       charge at a, export later at b:    q_b*eta_d - p_a/eta_c - wear
#       export surplus above the departure target: q_a*eta_d - p_min/eta_c - wear
#     keeping the SoC path inside [reserve, soc_max] between the two ends.
#     Arbitrage charges only in the cheapest tariff periods, so charging stays
#     off-peak (the regulators' off-peak share); departure needs may use any.
# Battery-side energy is what moves the SoC; limits and prices are on the AC
# side: charging c battery-Wh takes c/eta_c from the grid, exporting d gives
# d*eta_d.
from v2g.clock import local_minute, local_month
from v2g.guard import DEP_MARGIN_CPCT
from v2g.settings import Settings

# A budget is never squeezed into less than this: near the end of a segment
# a small remainder must not become a burst at full power (what is left
# spills into the next segment or the departure buffer instead).
_MIN_SPREAD_S = const(900)
# How far ahead a plan looks when the next departure is further away (a
# weekend): the allocation is quadratic in the number of tariff segments,
# and a week of them would stall a board's control loop for seconds.
_HORIZON_S = const(129600)  # 36 h

class Segment:
    __slots__ = ("t0", "t1", "imp", "exp", "cheap", "c_wh", "d_wh", "why")

    def __init__(self, t0, t1, imp, exp, cheap):
        self.t0 = t0
        self.t1 = t1
        self.imp = imp
        self.exp = exp
        self.cheap = cheap
        self.c_wh = 0.0  # battery-side energy in
        self.d_wh = 0.0  # battery-side energy out
        self.why = "plan_idle"

    def hours(self):
        return (self.t1 - self.t0) / 3600


class Plan:
    """settings: the owner's reserve and departure (v2g.settings), shared
    with the guard; a change there (its version) replans at the next due()."""

    def __init__(self, cfg, clock, settings=None):
        self.clock = clock
        self.settings = Settings(cfg) if settings is None else settings
        tariff = cfg["tariff"]
        self.periods = tariff["periods"]
        # each month's periods (tariff.seasons; the same list for all twelve
        # without) and the cheapest import among them: "cheap" and the value
        # of energy left at the horizon are the season's, a summer valley
        # is not a winter one
        seasons = tariff.get("seasons") or (None,) * 12
        self.month_periods = tuple(ps or self.periods for ps in seasons)
        self.month_cheapest = tuple(min(p["import"] for p in ps) for ps in self.month_periods)
        self.seasonal = any(seasons)
        self.utc_offset_min = cfg["utc_offset_min"]
        b = cfg["battery"]
        self.cap_wh = b["capacity_wh"]
        self.eta_c = b["charge_eff"]
        self.eta_d = b["discharge_eff"]
        self.wear = b["wear_cost_per_kwh"]
        # export per local day, battery side: at most this many capacities
        cyc = b["v2g_cycles_per_day"]
        self.export_cap_wh = None if cyc is None else cyc * b["capacity_wh"]
        self.soc_max_pct = b["soc_max_pct"]
        self.charge_w = cfg["limits"]["charge_w"]
        self.discharge_w = cfg["limits"]["discharge_w"]
        self.min_w = cfg["limits"]["min_w"]
        dep = cfg["departure"]
        self.buffer_s = dep["buffer_min"] * 60
        self.replan_s = cfg["plan"]["replan_s"]
        self.segments = []
        self.computed_at = None
        self.computed_version = None  # settings.version the plan was made from
        self.shortfall_wh = 0
        self.departure_s = None
        self.idle_why = "plan_idle"  # a segment's reason when it has no budget

    # --- tariff

    def period_at(self, unix_s):
        m = local_minute(unix_s, self.utc_offset_min)
        for p in self.month_periods[local_month(unix_s, self.utc_offset_min) - 1]:
            s, e = p["start"], p["end"]
            if (s < e and s <= m < e) or (s > e and (m >= s or m < e)):
                return p
        raise ValueError("tariff does not cover minute %d" % m)

    def next_departure(self, now):
        """Time of the next departure at or after now (the same epoch as
        now: unix or the firmware's, both a Thursday at 00:00 UTC, so the
        day and weekday below are the same), or None: no departure in the
        next 7 days (the schedule has none)."""
        local_s = now + self.utc_offset_min * 60
        day = local_s // 86400
        m_now = local_s % 86400 // 60
        st = self.settings
        for i in range(8):
            m = st.dep_min_on((day + i + 3) % 7)  # day 0 was a Thursday (3)
            if m is None or (i == 0 and m < m_now):
                continue
            return (day + i) * 86400 + m * 60 - self.utc_offset_min * 60
        return None

    def _segments(self, now, end):
        segs = []
        t = now
        off_s = self.utc_offset_min * 60
        while t < end:
            p = self.period_at(t)
            m = local_minute(t, self.utc_offset_min)
            month = local_month(t, self.utc_offset_min)
            rem = (p["end"] - m) % 1440 or 1440
            t1 = min(end, (t // 60 + rem) * 60)
            if self.seasonal:
                # a period that wraps past midnight ends there when the
                # next day is in another season (other periods: the config
                # gives a season's months, and a season equal to
                # tariff.periods, one shared list); 31 July to 1 August
                # stays one segment
                midnight = ((t + off_s) // 86400 + 1) * 86400 - off_s
                mp = self.month_periods
                if t1 > midnight and mp[local_month(midnight, self.utc_offset_min) - 1] is not mp[month - 1]:
                    t1 = midnight
            segs.append(Segment(t, t1, p["import"], p["export"], p["import"] <= self.month_cheapest[month - 1]))
            t = t1
        return segs

    # --- allocation

    def recompute(self, soc_pct, now=None, exported_today_wh=0):
        """exported_today_wh: AC energy exported since local midnight (the
        control loop counts it from 701 TotWhInj), for the daily cap."""
        if now is None:
            now = self.clock.time()
        self.computed_at = now
        self.computed_version = self.settings.version
        dep = self.next_departure(now)
        self.departure_s = dep
        cap = self.cap_wh / 100
        floor = self.settings.reserve_pct * cap
        why = "plan_idle"
        if dep is None or dep - self.buffer_s > now + _HORIZON_S:
            # No departure within the horizon (a weekend, days the schedule
            # leaves free): plan the horizon with no departure charge in
            # it; the departure is then still more than _HORIZON_S away, so
            # charging for it can wait (and the pack waits at a lower SoC:
            # calendar ageing grows with time at high SoC). The reserve is
            # what keeps an unplanned trip possible meanwhile.
            end = now + _HORIZON_S
            in_buffer = False
            target = floor
            why = "no_departure_scheduled"  # none in the next 7 days
            if dep is not None:
                why = "departure_days_away"
        else:
            end = dep - self.buffer_s
            in_buffer = end < now + 300
            if in_buffer:
                # inside the departure buffer: only charging for the departure
                end = dep
                if dep <= now + 60:
                    # the departure minute itself: up to the one after it
                    nxt = self.next_departure(dep + 60)
                    end = now + _HORIZON_S if nxt is None else min(nxt - self.buffer_s, now + _HORIZON_S)
            target = self.target_pct() * cap
        self.idle_why = why
        segs = self._segments(now, end)
        self.segments = segs
        n = len(segs)
        # SoC path at segment boundaries, battery Wh
        e = [soc_pct * cap] * (n + 1)
        cmax = [s.hours() * self.charge_w * self.eta_c for s in segs]
        dmax = [s.hours() * self.discharge_w / self.eta_d for s in segs]
        ceil_arb = self.soc_max_pct * cap
        day = None
        if self.export_cap_wh is not None:
            # battery.v2g_cycles_per_day: what each local day may still
            # export, battery side, bounds every segment of that day
            off = self.utc_offset_min * 60
            day = [(sg.t0 + off) // 86400 for sg in segs]
            left = {d: self.export_cap_wh for d in day}
            today = (now + off) // 86400
            if today in left:
                left[today] = max(0, left[today] - exported_today_wh / self.eta_d)
            for k in range(n):
                dmax[k] = min(dmax[k], left[day[k]])

        def charge(k, wh, why):
            segs[k].c_wh += wh
            cmax[k] -= wh
            for j in range(k + 1, n + 1):
                e[j] += wh
            if segs[k].why == "plan_idle" or why in ("below_reserve", "departure_charge"):
                segs[k].why = why

        def discharge(k, wh, why):
            segs[k].d_wh += wh
            dmax[k] -= wh
            for j in range(k + 1, n + 1):
                e[j] -= wh
            segs[k].why = why
            if day is not None:
                left[day[k]] -= wh
                for j in range(n):
                    if day[j] == day[k]:
                        dmax[j] = min(dmax[j], left[day[k]])

        # 1. back to the reserve as soon as possible
        k = 0
        while k < n and e[k] < floor:
            need = floor - e[k]
            wh = min(need, cmax[k])
            if wh > 0:
                charge(k, wh, "below_reserve")
            k += 1
        # 2. departure: cheapest first, the latest among equals: the pack
        # then waits at the lower SoC (calendar ageing grows with time at
        # high SoC), while a cheaper period earlier still comes first
        order = sorted(range(n), key=lambda i: (segs[i].imp, -i))
        need = target - e[n]
        for k in order:
            if need <= 0.5:
                break
            wh = min(need, cmax[k])
            if wh > 0:
                charge(k, wh, "departure_charge")
                need -= wh
        self.shortfall_wh = max(0, need)
        # 3. arbitrage (never in the last stretch before departure)
        if not in_buffer:
            self._arbitrage(segs, e, cmax, dmax, floor, ceil_arb, target, charge, discharge)
        return segs

    def _arbitrage(self, segs, e, cmax, dmax, floor, ceil_arb, target, charge, discharge):
        n = len(segs)
        if not n:
            return
        eta_c, eta_d, wear = self.eta_c, self.eta_d, self.wear
        # what surplus energy would cost to buy back, in the season the horizon ends in
        v_end = self.month_cheapest[local_month(segs[-1].t1, self.utc_offset_min) - 1] / eta_c
        for _ in range(4 * n + 4):
            best = None
            best_m = 1e-6
            for a in range(n):
                sa = segs[a]
                # export at a
                if dmax[a] > 1 and sa.c_wh == 0:
                    qa = sa.exp * eta_d - wear
                    # surplus above the departure target, no recharge
                    m = qa - v_end
                    if m > best_m:
                        room = min(min(e[a + 1:]) - floor, e[n] - target, dmax[a])
                        if room > 1:
                            best, best_m = (a, None, room, "surplus_export"), m
                    for b in range(a + 1, n):
                        sb = segs[b]
                        if not sb.cheap or cmax[b] <= 1 or sb.d_wh > 0:
                            continue
                        m = qa - sb.imp / eta_c
                        if m > best_m:
                            room = min(min(e[a + 1 : b + 1]) - floor, dmax[a], cmax[b])
                            if room > 1:
                                best, best_m = (a, b, room, "peak_export"), m
                # charge cheap at a, export later at b
                if sa.cheap and cmax[a] > 1 and sa.d_wh == 0:
                    pa = sa.imp / eta_c
                    for b in range(a + 1, n):
                        sb = segs[b]
                        if dmax[b] <= 1 or sb.c_wh > 0:
                            continue
                        m = sb.exp * eta_d - wear - pa
                        if m > best_m:
                            room = min(ceil_arb - max(e[a + 1 : b + 1]), cmax[a], dmax[b])
                            if room > 1:
                                best, best_m = (b, a, room, "cheap_charge"), m
            if best is None:
                return
            d_at, c_at, wh, why = best
            if why == "cheap_charge":
                charge(c_at, wh, "cheap_charge")
                discharge(d_at, wh, "peak_export")
            else:
                discharge(d_at, wh, why)
                if c_at is not None:
                    charge(c_at, wh, "cheap_charge")

    def target_pct(self):
        return min(100, self.settings.dep_pct + DEP_MARGIN_CPCT / 100)

    # --- output

    def invalidate(self):
        """Replan at the next due() (the wall clock stepped)."""
        self.computed_at = None

    def due(self, now):
        # a clock that went back (now before computed_at) replans too
        if self.computed_at is None or self.computed_version != self.settings.version:
            return True
        return not 0 <= now - self.computed_at < self.replan_s

    def request(self, now=None):
        """(ev_w, reason, ceiling_pct or None) for this moment."""
        if now is None:
            now = self.clock.time()
        for s in self.segments:
            if s.t0 <= now < s.t1:
                # the budget is spread over the whole segment (the first one
                # starts at computed_at)
                h = max(s.t1 - s.t0, _MIN_SPREAD_S) / 3600
                if s.c_wh > 0:
                    w = min(self.charge_w, int(s.c_wh / self.eta_c / h + 0.5))
                    # below min_w a power stage runs inefficiently: charge
                    # at min_w and finish sooner instead
                    w = max(w, self.min_w)
                    if s.why == "below_reserve":
                        w = self.charge_w  # the owner's reserve first, at full power
                    ceiling = None
                    if s.why in ("departure_charge", "below_reserve"):
                        ceiling = self.target_pct()
                    return w, s.why, ceiling
                if s.d_wh > 0:
                    w = min(self.discharge_w, int(s.d_wh * self.eta_d / h + 0.5))
                    # an export too small to run the stage efficiently is skipped
                    return (-w, s.why, None) if w >= self.min_w else (0, self.idle_why, None)
                return 0, self.idle_why, None
        return 0, self.idle_why, None
