"""PROTOTYPE for issue 14, not wired into the evaluator: the keep rule it proposes, simulated.

An always-valid normal-mixture confidence sequence on the pairs' log ratios (valid at every look, so the loop
may look after every ABBA block from the first), its variance pooled with the run's A/A calibration (borrowed
strength: a decision at 2 pairs is possible), and a non-binding futility stop by conditional power (it can only
lower the keep rate, never raise false keeps). tg alone, no guard. Simulated on bench/evaluator_power.py's noise
models through its SimulatedBench; prints a table per setting. A simulation, not a measurement.

    .venv/bin/python bench/evaluator_sequential_sim.py
"""
import math, sys
import numpy as np
from scipy import stats
sys.path.insert(0, "/work/main/bench")
from evaluator_power import SHARED_BOX, QUIET, SimulatedBench
from readfirst.agents.evaluator import CANDIDATE, BASELINE

ALPHA = 0.05

def half_width(n, sd, r):
    # |mean - mu| <= sd * sqrt((n + r) log((n + r) / (r alpha^2))) / n   (mixture precision rho = r sd^2)
    return sd * math.sqrt((n + r) * math.log((n + r) / (r * ALPHA ** 2))) / n

def pooled_sd(d, prior_sd, prior_df):
    n = len(d)
    own = (n - 1) * np.var(d, ddof=1) if n > 1 else 0.0
    df = prior_df + n - 1
    if df < 1:
        return math.inf, 0
    sd = math.sqrt((prior_df * prior_sd ** 2 + own) / df)
    return sd * stats.t.ppf(1 - ALPHA / 2, df) / stats.norm.ppf(1 - ALPHA / 2), df

def look(d, prior_sd, prior_df, m, r, horizon, futility):
    d = np.asarray(d); n = len(d)
    sd, _ = pooled_sd(d, prior_sd, prior_df)
    if not math.isfinite(sd):
        return "undecided"
    mean = d.mean(); h = half_width(n, sd, r)
    if mean - h > m: return "keep"
    if mean + h < m: return "discard"
    if futility and n >= 4 and horizon > n:
        mu = mean + sd / math.sqrt(n)            # one standard error optimistic
        final_mean = (n * mean + (horizon - n) * mu) / horizon
        final_sd = sd * math.sqrt(horizon - n) / horizon
        need = m + half_width(horizon, sd, r)
        cp = stats.norm.sf((need - final_mean) / final_sd)
        if cp < futility: return "futile"
    return "undecided"

def calib(model, seed, pairs):
    b = SimulatedBench(model, 0.0, seed)
    b.measure(BASELINE); b.measure(BASELINE)
    d = []
    while len(d) < pairs:
        a1, c1, c2, a2 = (b.measure(BASELINE)["tg128"] for _ in range(4))
        d += [math.log(c1 / a1), math.log(c2 / a2)]
    d = np.array(d); mad = stats.median_abs_deviation(d, scale="normal")
    kept = d[np.abs(d - np.median(d)) <= 3.5 * mad] if mad > 0 else d
    return float(np.std(kept, ddof=1)), len(d) - 1

def trial(model, effect, seed, max_runs, r, futility, cal_pairs):
    prior_sd, prior_df = calib(model, 50_000 + seed, cal_pairs) if cal_pairs else (0.0, 0)
    b = SimulatedBench(model, effect, seed)
    b.measure(BASELINE); b.measure(CANDIDATE)
    runs, d = 2, []
    m = math.log1p(0.01); horizon = (max_runs - 2) // 2
    while runs + 4 <= max_runs:
        a1 = b.measure(BASELINE)["tg128"]; c1 = b.measure(CANDIDATE)["tg128"]
        c2 = b.measure(CANDIDATE)["tg128"]; a2 = b.measure(BASELINE)["tg128"]
        runs += 4; d += [math.log(c1 / a1), math.log(c2 / a2)]
        out = look(d, prior_sd, prior_df, m, r, horizon, futility)
        if out != "undecided":
            return out, runs
    return "cap", runs

def row(model, effect, trials, **kw):
    outs = [trial(model, effect, s, **kw) for s in range(trials)]
    kept = sum(o == "keep" for o, _ in outs)
    runs = [n for _, n in outs]
    return f"{effect:+.0%}: kept {kept}/{trials} ({kept/trials:.1%}), median runs {np.median(runs):.0f}, mean runs {np.mean(runs):.1f}"

if __name__ == "__main__":
    for model in (SHARED_BOX, QUIET):
        for kw in (dict(max_runs=26, r=2, futility=0.1, cal_pairs=8), dict(max_runs=42, r=4, futility=0.1, cal_pairs=8),
                   dict(max_runs=62, r=6, futility=0.1, cal_pairs=8), dict(max_runs=62, r=6, futility=0.1, cal_pairs=4)):
            print(model.name, kw, flush=True)
            for eff, n in ((0.0, 400), (0.03, 200), (0.2, 100), (-0.1, 100), (0.1, 100)):
                print("   ", row(model, eff, n, **kw), flush=True)
