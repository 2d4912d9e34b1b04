"""The two-sided known-answer check: a linear-Gaussian head's measured KL against its exact expectation.

Where a variant fits a well-specified linear-Gaussian head by exact maximum likelihood on a linear-Gaussian
task (``oracle``: regressors h*(c), p = d_h; ``direct``: regressors c, p = d_c), the expected KL at every n_t
is known (:func:`theory.truth.known_answers.expected_kl_gaussian_regression`), and so is the whole law of the
statistic

    R = mean over seeds and n_t of KL_measured / E KL(n_t)

(simulated exactly, nested data included, :func:`theory.truth.known_answers.simulate_ratio_null`; the Monte Carlo
error of each KL estimate is added from the records). R should be 1. The check FAILs when R is too high OR
too low for that law (two-sided p-value), and passes only when it also had the power to see R off by the
factor ``margin`` either way. It is what catches a KL estimator off by a factor or a constant, a ground truth
with the wrong variance, or a head that ignores its context: the true log-density does not cancel here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from theory.truth.known_answers import expected_kl_gaussian_regression, min_rows, simulate_ratio_null
from theory.verdicts.stats import MIN_SEEDS
from theory.verdicts.verdict import INSUFFICIENT, INSUFFICIENT_SEEDS, CheckResult, Record, fmt, series

#: Variants whose head reads a Gaussian regressor of known dimension: variant -> record key of p.
KNOWN_ANSWER_VARIANTS = {"oracle": "d_h", "direct": "d_c"}
#: Head kinds that are well-specified linear-Gaussian heads with an exact maximum-likelihood fit.
PARAMETRIC_KINDS = ("linear_gaussian",)


def applies(record: Record) -> bool:
    """A record the known answer holds for: a linear-Gaussian head, oracle/direct, a linear-Gaussian task."""
    return (record.get("head_kind") in PARAMETRIC_KINDS and record.get("variant") in KNOWN_ANSWER_VARIANTS
            and record.get("task_name") == "conditional_gaussian" and record.get("embedding") == "linear")


def check_known_answer(records: Sequence[Record], head: str, variant: str, *, confidence: float = 0.95,
                       margin: float = 2.0, power: float = 0.8, task: str | None = None,
                       reps: int = 2000) -> CheckResult:
    """Measured KL / exact E KL, averaged over seeds and n_t, against its exact law under a correct pipeline."""
    name, scope = "KL equals its known answer", f"{head}, {variant}" + (f", {task}" if task else "")
    hyp = ("a maximum-likelihood linear-Gaussian head on n rows has E KL = 1/2 [d n (1 + E q)/(m - d - 1) - d + "
           "sum psi((m - i + 1)/2) + d log(2/n)] (about k / 2n): the measured KL is neither above nor below it")
    stat = ("R = mean over seeds and n_t of KL / E KL; two-sided p-value from R's exact simulated law (nested "
            "data, plus each record's Monte Carlo SE)")
    data = series(records, head, variant, task=task)
    rs = [r for lv in data.values() for r in lv.values()]
    if not rs or not all(applies(r) for r in rs):
        return CheckResult(name, scope, INSUFFICIENT, "no known answer for these records (needs a linear_gaussian "
                           "head, oracle or direct, on the linear conditional_gaussian task)",
                           hypothesis=hyp, statistic=stat)
    d_x, p = int(rs[0]["d_x"]), int(rs[0][KNOWN_ANSWER_VARIANTS[variant]])
    levels = [n for n in data if n >= min_rows(d_x, p)]
    seeds = sorted(set.intersection(*(set(data[n]) for n in levels))) if levels else []
    if not levels:
        return CheckResult(name, scope, INSUFFICIENT, f"every n_t is below the {min_rows(d_x, p)} rows the "
                           "expected KL needs", hypothesis=hyp, statistic=stat)
    if len(seeds) < MIN_SEEDS:
        return CheckResult(name, scope, INSUFFICIENT_SEEDS, f"{len(seeds)} seed(s) at every n_t",
                           hypothesis=hyp, statistic=stat)
    expected = {n: expected_kl_gaussian_regression(n, d_x, p) for n in levels}
    ratio = float(np.mean([data[n][s]["kl"] / expected[n] for n in levels for s in seeds]))
    mc_var = sum((float(data[n][s].get("kl_se") or 0.0) / expected[n]) ** 2 for n in levels for s in seeds) \
        / (len(levels) * len(seeds)) ** 2
    null = simulate_ratio_null(levels, d_x, p, len(seeds), reps=reps)
    null = null + np.random.default_rng(1).normal(0.0, math.sqrt(mc_var), size=null.shape)
    p_fail = float(min(1.0, 2 * min(np.mean(null <= ratio), np.mean(null >= ratio)) + 1.0 / null.size))
    alpha = 1.0 - confidence
    lo, hi = np.quantile(null, [alpha / 2, 1 - alpha / 2])
    # power against R = margin and R = 1/margin: the null law scaled by the factor, outside the acceptance band
    seen_high = float(np.mean((null * margin > hi) | (null * margin < lo)))
    seen_low = float(np.mean((null / margin > hi) | (null / margin < lo)))
    powered = min(seen_high, seen_low) >= power
    per_level = ", ".join(f"{n}: {fmt(float(np.mean([data[n][s]['kl'] for s in seeds])), 3)} vs "
                          f"{fmt(expected[n], 3)}" for n in levels)
    summary = (f"R = {ratio:.3f} (acceptance band [{lo:.2f}, {hi:.2f}], p = {fmt(p_fail, 2)}; power against "
               f"x{margin:g} / x1/{margin:g}: {seen_high:.2f} / {seen_low:.2f}); mean KL vs exact E KL by n_t "
               f"{{{per_level}}}; p = {p}, k = {d_x * (p + 1) + d_x * (d_x + 1) // 2}")
    numbers = {"ratio": ratio, "band": [float(lo), float(hi)], "expected": expected, "p": p, "d_x": d_x,
               "seeds": len(seeds), "power_high": seen_high, "power_low": seen_low, "margin": margin}
    return CheckResult(name, scope, INSUFFICIENT, summary, numbers, hyp, stat, p_pass=None, p_fail=p_fail,
                       powered=powered)
