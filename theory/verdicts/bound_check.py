"""The Girsanov bound checked against what it bounds: the KL of the reverse-SDE sampler's law.

The bound (Song, Durkan, Murray, Ermon 2021, Thm 1), for the SDE started at N(0, I) at t = 1 and run with the
learned score s_theta down to t_eps,

    KL(p_{t_eps} || p_hat^SDE) <= KL(p_1 || N(0, I)) + 1/2 int_{t_eps}^1 beta E_{p_t} |s_theta - grad log p_t|^2 dt,

is a statement about the SDE law only. The density that a diffusion head's ``log_prob`` evaluates (and the
sweep's "kl" measures) is the probability-flow ODE's, which the bound does not cover: with a score error
the ODE law's KL can exceed it (the closed-form linear-error case of :mod:`theory.truth.linear_score` shows it by
a factor of four). So:

- :func:`check_sde_bound` (a verdict): per cell, the one-sided z = (kl_sde - bound) / hypot(kl_sde_se, bound_se);
  Holm's step-down procedure at family-wise level ``alpha`` across the cells on p = 1 - Phi(z). FAIL when any
  cell is rejected. Otherwise PASS only when the comparison had power: a cell is *powered* when a measured KL
  ``margin`` x bound above its bound would have been rejected with probability >= ``power`` at the strictest
  Holm threshold (alpha / cells), i.e. (z_{1 - alpha/m} + z_{power}) SE <= margin * bound; PASS needs at least
  ``min_powered`` of the cells powered, else "insufficient data".
- :func:`diagnose_ode_bound` (never a verdict): how the ODE-law KL ("kl") sits against the bound, for reading,
  with the SDE-law KL beside it.

The kNN estimate of kl_sde is biased DOWN where the sampler's law is narrower than, or shifted against, the
target (measured -15 to -30% on a shifted case and up to -65% for a law half as wide, at 500 rows; see
docs/theory.md). That bias can hide a violation, never create one: a FAIL stands; a PASS says "no
violation larger than that bias plus the stated detectable excess".

Records are sweep records of diffusion cells carrying ``bound``, ``bound_se``, ``kl_sde``, ``kl_sde_se``
(:func:`theory.truth.bounds.girsanov_bound_for` and :func:`theory.truth.bounds.sde_kl_for`).

Example:
    >>> result = check_sde_bound(records, "diffusion")
    >>> print(result.verdict, result.summary)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np

from shared_embed.validation import check_fraction, check_positive_float
from theory.verdicts.stats import holm
from theory.verdicts.verdict import DIAGNOSTIC, FAIL, INSUFFICIENT, PASS, CheckResult, Record, ok_records

_NORMAL = NormalDist()
#: The bound checks return plain :class:`~theory.verdicts.verdict.CheckResult` objects (hypothesis and statistic set).
BoundCheckResult = CheckResult


def holm_reject(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Holm's step-down (:func:`theory.verdicts.stats.holm`): which p-values are rejected at family-wise level alpha."""
    check_fraction("alpha", alpha)
    return [p <= alpha for p in holm(p_values)]


def _finite(r: Record, *keys: str) -> bool:
    return all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k]) for k in keys)


def _cells(records: Sequence[Record], head: str, *keys: str) -> list[Record]:
    return [r for r in ok_records(records) if r["head"] == head and _finite(r, *keys)]


def _where(r: Record) -> str:
    return f"n_t={r.get('n_t')}, {r.get('variant')}, seed {r.get('seed')}"


def _one_sided_p(excess: float, se: float) -> float:
    if se > 0:
        return 1.0 - _NORMAL.cdf(excess / se)
    return 0.0 if excess > 0 else 1.0


def check_sde_bound(
    records: Sequence[Record],
    head: str,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    margin: float = 0.5,
    min_powered: float = 0.5,
) -> BoundCheckResult:
    """The reverse-SDE law's measured KL is not above its Girsanov bound in any cell (Holm at ``alpha``).

    Args:
        alpha: family-wise one-sided error rate across the cells.
        power / margin: a cell is powered when a KL of (1 + margin) x bound would be rejected with probability
            >= power at the strictest Holm threshold.
        min_powered: fraction of cells that must be powered for a PASS.
    """
    check_fraction("alpha", alpha)
    check_fraction("power", power)
    check_positive_float("margin", margin)
    check_fraction("min_powered", min_powered, closed=True)
    name, scope = "Girsanov bound holds over the SDE law's KL", head
    hypothesis = (
        "H0 in every cell: KL(p_t_eps || law of the reverse-SDE sampler) <= Girsanov bound; "
        "a cell rejects H0 when its kNN estimate exceeds the bound beyond the combined SE"
    )
    statistic = (
        f"z = (kl_sde - bound) / hypot(kl_sde_se, bound_se), one-sided p = 1 - Phi(z), Holm step-down at "
        f"family-wise alpha = {alpha:g}; powered: (z_(1-alpha/m) + z_{power:g}) SE <= {margin:g} x bound"
    )
    rs = _cells(records, head, "bound", "bound_se", "kl_sde", "kl_sde_se")
    if not rs:
        return BoundCheckResult(
            name,
            scope,
            INSUFFICIENT,
            "no records with both a Girsanov bound and an SDE-law KL (kl_sde: theory.truth.bounds.sde_kl_for)",
            {},
            hypothesis,
            statistic,
        )
    m = len(rs)
    ses = [math.hypot(r["kl_sde_se"], r["bound_se"]) for r in rs]
    excess = [r["kl_sde"] - r["bound"] for r in rs]
    p = [_one_sided_p(e, s) for e, s in zip(excess, ses)]
    rejected = holm_reject(p, alpha)
    detectable = [(_NORMAL.inv_cdf(1 - alpha / m) + _NORMAL.inv_cdf(power)) * s for s in ses]
    powered = [d <= margin * r["bound"] for d, r in zip(detectable, rs)]
    worst = min(range(m), key=lambda i: p[i])
    ratios = [r["kl_sde"] / r["bound"] for r in rs if r["bound"] > 0]
    numbers = {
        "cells": m,
        "violations": sum(rejected),
        "powered": sum(powered),
        "alpha": alpha,
        "min_p": p[worst],
        "worst_excess": excess[worst],
        "worst_se": ses[worst],
        "median_detectable": float(np.median(detectable)),
        "ratio_median": float(np.median(ratios)) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
    }
    worst_text = (
        f"most extreme {_where(rs[worst])}: kl_sde {rs[worst]['kl_sde']:.4g} +- {rs[worst]['kl_sde_se']:.2g} "
        f"vs bound {rs[worst]['bound']:.4g} +- {rs[worst]['bound_se']:.2g} (p = {p[worst]:.2g})"
    )
    if any(rejected):
        verdict = FAIL
        summary = f"{sum(rejected)}/{m} cells above their bound (Holm, alpha {alpha:g}); {worst_text}"
    else:
        verdict = PASS if sum(powered) >= max(1, math.ceil(min_powered * m)) else INSUFFICIENT
        summary = (
            f"no cell above its bound (Holm, alpha {alpha:g}); {sum(powered)}/{m} cells could detect a KL "
            f"{margin:.0%} above the bound with power {power:.0%} (median detectable excess "
            f"{numbers['median_detectable']:.3g} nats); kl_sde/bound median "
            f"{numbers['ratio_median'] if ratios else math.nan:.3g}; {worst_text}"
        )
    return BoundCheckResult(name, scope, verdict, summary, numbers, hypothesis, statistic)


def diagnose_ode_bound(records: Sequence[Record], head: str, z: float = 2.0) -> BoundCheckResult:
    """How the probability-flow ODE law's KL ("kl") compares with the Girsanov bound: numbers, no verdict.

    No theorem relates the two, so an ODE KL above the bound is not a defect; the SDE-law KL (when recorded)
    is shown beside it for reading.
    """
    check_positive_float("z", z)
    name, scope = "Probability-flow ODE KL against the Girsanov bound (diagnostic)", head
    hypothesis = "none: the Girsanov bound covers the reverse-SDE law, not the probability-flow ODE's"
    statistic = f"kl / bound per cell; cells with kl above the bound by > {z:g} combined SE"
    rs = _cells(records, head, "bound", "bound_se", "kl", "kl_se")
    if not rs:
        return BoundCheckResult(name, scope, DIAGNOSTIC, "no records with a Girsanov bound", {}, hypothesis, statistic)
    above = sum((r["kl"] - r["bound"]) > z * math.hypot(r["kl_se"], r["bound_se"]) for r in rs)
    ratios = [r["kl"] / r["bound"] for r in rs if r["bound"] > 0]
    sde = [r["kl_sde"] for r in rs if _finite(r, "kl_sde")]
    numbers = {
        "cells": len(rs),
        "ode_above_bound": above,
        "ratio_median": float(np.median(ratios)) if ratios else None,
        "ratio_max": max(ratios) if ratios else None,
        "ode_minus_sde_median": float(np.median([r["kl"] - r["kl_sde"] for r in rs if _finite(r, "kl_sde")]))
        if sde
        else None,
    }
    summary = (
        f"ODE KL above the bound by > {z:g} SE in {above}/{len(rs)} cells (not a defect: no theorem applies); "
        f"kl/bound median {numbers['ratio_median'] if ratios else math.nan:.3g}, max "
        f"{numbers['ratio_max'] if ratios else math.nan:.3g}"
        + (f"; ODE minus SDE KL median {numbers['ode_minus_sde_median']:.3g} nats" if sde else "")
    )
    return BoundCheckResult(name, scope, DIAGNOSTIC, summary, numbers, hypothesis, statistic)
