"""Small-sample statistics behind every verdict: t intervals over seeds, per-seed slopes, Holm's procedure.

A seed is one independent replicate of a whole curve (its own task instance, data and fits), so intervals are
built from per-seed statistics with Student t quantiles (``df = seeds - 1``), never from normal quantiles
or percentile bootstraps over 3-5 seeds (which under-cover: a percentile bootstrap of the slope covered the
true exponent 73-82% of the time at 3-4 seeds). :func:`slope_interval_coverage` measures the coverage of
the interval actually used, by simulation, at a given number of seeds and n levels.

Each check turns its statistic into two one-sided p-values: ``p_pass`` (small: evidence FOR the claim) and
``p_fail`` (small: evidence AGAINST it). :func:`holm` adjusts a family of p-values so the chance of any
false verdict in the family stays at most ``alpha``.

Example:
    >>> iv = t_interval([1.0, 1.2, 0.9], confidence=0.95)
    >>> round(iv.mean, 3), iv.df
    (1.033, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from shared_embed.errors import DataError

#: Fewest seeds for which a check gives a verdict (a t interval on 2 values has 1 degree of freedom).
MIN_SEEDS = 3


@dataclass(frozen=True)
class Interval:
    """mean +- t_{df} * se: a two-sided ``confidence`` interval from ``n`` per-seed values."""

    mean: float
    se: float
    low: float
    high: float
    n: int
    df: int
    confidence: float

    def p_greater(self, value: float) -> float:
        """One-sided p-value of H0 'true mean <= value' (small: the mean is above ``value``)."""
        return t_tail(self.mean - value, self.se, self.df)

    def p_less(self, value: float) -> float:
        """One-sided p-value of H0 'true mean >= value' (small: the mean is below ``value``)."""
        return t_tail(value - self.mean, self.se, self.df)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def t_tail(diff: float, se: float, df: int) -> float:
    """P(T_df >= diff / se): the one-sided p-value of a difference ``diff`` with standard error ``se``."""
    if not (math.isfinite(diff) and math.isfinite(se)) or df < 1:
        return math.nan
    if se <= 0:  # identical replicates: no evidence either way (the replicate check FAILs such records)
        return math.nan
    return float(sps.t.sf(diff / se, df))


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """The Student t interval of the mean of ``values`` (independent replicates, e.g. one per seed)."""
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        raise DataError(f"a t interval needs at least 2 values, got {v.size}")
    if not np.isfinite(v).all():
        raise DataError("values must be finite to build an interval (a NaN or inf record reached it)")
    mean, se, df = float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size)), v.size - 1
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    return Interval(mean, se, mean - half, mean + half, int(v.size), df, confidence)


def per_seed_exponents(data: Mapping[int, Mapping[int, float]]) -> tuple[dict[int, float], list[int]]:
    """Each seed's decay exponent r in y ~ C n^(-r): minus the OLS slope of log y on log n.

    Args:
        data: {n: {seed: y}}.

    Returns:
        ({seed: exponent}, levels used). Levels are those where EVERY seed has a positive value (a log needs
        one), so all seeds are fitted on the same n; seeds missing at a used level are left out.
    """
    levels_all = sorted(data)
    seeds = sorted(set.intersection(*(set(data[n]) for n in levels_all))) if levels_all else []
    levels = [n for n in levels_all if seeds and all(data[n][s] > 0 and math.isfinite(data[n][s]) for s in seeds)]
    if len(levels) < 2 or not seeds:
        return {}, levels
    x = np.log(np.asarray(levels, dtype=float))
    y = np.log(np.array([[data[n][s] for n in levels] for s in seeds]))  # (seeds, levels)
    slopes = np.polyfit(x, y.T, 1)[0]
    return {s: float(-b) for s, b in zip(seeds, np.atleast_1d(slopes))}, levels


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (NaN stays NaN and is left out of the family): reject where adjusted <= alpha."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out.tolist()
    order = idx[np.argsort(p[idx], kind="stable")]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def holm_levels(p_values: Sequence[float], alpha: float) -> list[float]:
    """The level each p-value was compared at in Holm's step-down procedure at family level ``alpha``.

    Sorted ascending, p_(k) is rejected while p_(j) <= alpha / (m - j + 1) for every j <= k; a rejected
    hypothesis of rank k was tested at alpha / (m - k + 1), every other one at the level of the first step that
    was not rejected. So a hypothesis is rejected iff its p-value is <= its level, and an acceptance band drawn at
    that level agrees with the verdict. NaN p-values get NaN.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    stop = m
    for rank, i in enumerate(order):
        level = alpha / (m - rank)
        if p[i] > level:
            stop = rank
            break
        out[i] = level
    for i in order[stop:]:
        out[i] = alpha / (m - stop)
    return out.tolist()


def slope_interval_coverage(
    seeds: int,
    levels: Sequence[float],
    *,
    exponent: float = 0.5,
    confidence: float = 0.95,
    reps: int = 4000,
    shape: float = 4.5,
    seed: int = 0,
) -> float:
    """Coverage, by simulation, of the t interval on per-seed exponents that the exponent checks use.

    Each simulated seed is a curve y(n) = n^(-exponent) * G_n / shape with G_n ~ Gamma(shape) independent
    over n: the right-skewed scatter of a KL estimate (a Gaussian head's KL is about chi^2_k / 2n, i.e.
    Gamma(k/2); ``shape`` = 4.5 is k = 9). Returns the fraction of intervals containing ``exponent``.
    """
    if seeds < 2:
        raise DataError(f"coverage needs at least 2 seeds, got {seeds}")
    rng = np.random.default_rng(seed)
    n = np.asarray(levels, dtype=float)
    noise = rng.gamma(shape, 1.0 / shape, size=(reps, seeds, n.size))
    y = np.log(n ** (-exponent) * noise)
    x = np.log(n)
    xc = x - x.mean()
    slopes = (y * xc).sum(-1) / (xc**2).sum()  # (reps, seeds) OLS slopes
    r = -slopes
    mean, se = r.mean(1), r.std(1, ddof=1) / math.sqrt(seeds)
    half = sps.t.ppf(0.5 + confidence / 2, seeds - 1) * se
    return float(np.mean(np.abs(mean - exponent) <= half))


def mean_se(values: Sequence[float], mc_ses: Sequence[float] = ()) -> tuple[float, float]:
    """Mean and its SE: across values when there are >= 2, else the pooled Monte Carlo SE (for tables)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise DataError("mean_se needs at least one value")
    if v.size >= 2:
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    mc = np.asarray(mc_ses, dtype=float)
    return float(v.mean()), float(math.sqrt((mc**2).sum()) / v.size) if mc.size else float("nan")


def paired_seed_difference(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float]:
    """Two variants' per-seed values on the same seeds (a[i], b[i] from seed i): the mean of a - b, its SE across
    seeds (the paired SE) and the combined SE sqrt(SE_a^2 + SE_b^2) of the two means (the unpaired one, the
    stricter yardstick of the studies' "wins by more than 2 combined SE"). Both SEs are NaN with one seed."""
    if len(a) != len(b):
        raise DataError(f"a and b must hold one value per seed each, got {len(a)} and {len(b)}")
    mean, paired = mean_se([x - y for x, y in zip(a, b, strict=True)])
    return mean, paired, math.hypot(mean_se(a)[1], mean_se(b)[1])
