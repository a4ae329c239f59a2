"""Battery capacity fade from a published model: the simulator's physics.

LFP: NREL BLAST-Lite 1.1.1 (PyPI `blast-lite`), model
`lfp_gr_250AhPrismatic_2019` (P. Gasper, NREL), fit to the aging data of
large-format LFP-graphite cells in https://doi.org/10.1016/j.est.2023.109042.
Its equations, as BLAST-Lite states them, written here in a few lines of
numpy (the package itself pins numpy < 2 and pulls in a climate-data stack):
  q = 1 - qLoss_t - qLoss_EFC
  qLoss_t   = k_cal * t_days^0.526,  k_cal = p1 exp(p2/T) exp(p3 Ua/T)
  qLoss_EFC = k_cyc * EFC^0.828,    k_cyc = (p4 + p5 DoD + p6 C) (exp(p7/T) + exp(-p8/T))
with Ua the graphite potential at the SoC (Safari and Delacourt,
https://doi.org/10.1149/1.3567007, through the lithiation fraction of
Schimpe et al., https://doi.org/10.1149/2.1181714jes), and the stressors
taken per day as BLAST-Lite takes them per step: DoD = max - min SoC of the
day, C = the mean absolute C-rate while the SoC moves, EFC = half the sum
of the SoC changes (times the capacity left). Each day advances both power
laws from their present state (the "time-varying power state" update), so
a day at high SoC or with deep cycles ages the cell faster from then on.

NMC: Schmalstieg et al., "A holistic aging model for Li(NiMnCo)O2 based
18650 lithium-ion batteries", J. Power Sources 257 (2014) 325-334:
  C = 1 - alpha * t_days^0.75 - beta * sqrt(Q_Ah)
  alpha = (7.543 V - 23.75) * 1e6 * exp(-6976 / T)
  beta  = 7.348e-3 (V_mean - 3.667)^2 + 7.60e-4 + 4.081e-3 DoD
with V the cell voltage (the simulator's NMC open-circuit curve at the SoC),
V_mean and DoD per cycle from rainflow counting (the `rainflow` package,
ASTM E1049), Q the charge throughput of a 2.05 Ah cell, the same per-cell
share of the pack's.

The battery sits at 25 C (the packs of both papers' reference; no thermal
model here).
"""
import numpy as np

T_K = 298.15
_LFP = {"p1": 8.37e+04, "p2": -5.21e+03, "p3": -3.56e+03, "pcal": 0.526, "p4": 4.38e-08,
        "p5": 1.55e-08, "p6": 1.68e-07, "p7": 2.19e+03, "p8": 1.55e+05, "pcyc": 0.828}
_NMC_CELL_AH = 2.05


def graphite_ua(soc):
    """Graphite potential vs Li (V) at SoC 0..1."""
    xa = 8.5e-3 + soc * (0.78 - 8.5e-3)
    return (0.6379 + 0.5416 * np.exp(-305.5309 * xa) + 0.044 * np.tanh(-(xa - 0.1958) / 0.1088)
            - 0.1978 * np.tanh((xa - 1.0571) / 0.0854) - 0.6875 * np.tanh((xa + 0.0117) / 0.0529)
            - 0.0175 * np.tanh((xa - 0.5692) / 0.0875))


def _power_step(y0, dx, k, p):
    """y = k x^p advanced by dx from its present value y0."""
    if dx <= 0:
        return 0.0
    if y0 <= 0:
        return k * dx ** p
    return k * p * (y0 / k) ** ((p - 1) / p) * dx


def lfp_fade(t_s, soc, day_s=86400):
    """Capacity lost (0..1) over the SoC trace (soc 0..1 at times t_s),
    day by day; -> (q_loss, q_loss_calendar, q_loss_cycling)."""
    p = _LFP
    q_t = q_c = 0.0
    t_s = np.asarray(t_s, float)
    soc = np.asarray(soc, float)
    day = ((t_s - t_s[0]) // day_s).astype(int)
    edges = np.flatnonzero(np.diff(day)) + 1
    for lo, hi in zip(np.r_[0, edges], np.r_[edges, len(t_s)]):
        t, s = t_s[lo:hi], soc[lo:hi]
        if len(t) < 2:
            continue
        dt_days = (t[-1] - t[0] + (t[1] - t[0])) / 86400
        q = 1 - q_t - q_c
        d_efc = np.sum(np.abs(np.diff(s))) / 2 * q
        dod = s.max() - s.min()
        rate = np.abs(np.diff(s) / (np.diff(t) / 3600))
        rate[rate < 1e-2] = 0
        c_rate = rate.mean() * q
        k_cal = np.mean(abs(p["p1"]) * np.exp(p["p2"] / T_K) * np.exp(p["p3"] * graphite_ua(s) / T_K))
        k_cyc = (p["p4"] + p["p5"] * dod + p["p6"] * c_rate) * (np.exp(p["p7"] / T_K) + np.exp(-p["p8"] / T_K))
        q_t += _power_step(q_t, dt_days, k_cal, p["pcal"])
        q_c += _power_step(q_c, d_efc, k_cyc, p["pcyc"])
    return q_t + q_c, q_t, q_c


def nmc_fade(t_s, soc, cell_v):
    """Schmalstieg 2014 over the trace; cell_v(soc 0..1) -> V.
    -> (q_loss, q_loss_calendar, q_loss_cycling)."""
    import rainflow

    t_s = np.asarray(t_s, float)
    soc = np.asarray(soc, float)
    v = np.array([cell_v(x) for x in soc])
    days = (t_s[-1] - t_s[0] + (t_s[1] - t_s[0])) / 86400
    # calendar: alpha at the time-averaged voltage (the paper's storage tests
    # held each cell at one voltage; a varying one is averaged over time)
    alpha = (7.543 * v.mean() - 23.75) * 1e6 * np.exp(-6976 / T_K)
    q_cal = max(0.0, alpha) * days ** 0.75
    # cycling: each rainflow cycle's throughput at its own depth and mean voltage
    q_ah = 0.0
    beta_q = 0.0
    for rng, mean, count, _, _ in rainflow.extract_cycles(soc):
        ah = 2 * rng * _NMC_CELL_AH * count  # a full cycle moves its range twice
        vm = cell_v(mean)
        beta = 7.348e-3 * (vm - 3.667) ** 2 + 7.60e-4 + 4.081e-3 * rng
        beta_q += beta * ah
        q_ah += ah
    # sqrt(Q) with the throughput-weighted beta (cycles of different depths)
    q_cyc = (beta_q / q_ah) * np.sqrt(q_ah) if q_ah > 0 else 0.0
    return q_cal + q_cyc, q_cal, q_cyc


MODELS = {
    "lfp": "NREL BLAST-Lite 1.1.1 lfp_gr_250AhPrismatic_2019 (doi:10.1016/j.est.2023.109042), 25 C",
    "nmc": "Schmalstieg et al. 2014, J. Power Sources 257:325 (NMC 18650), rainflow cycles, 25 C",
}
