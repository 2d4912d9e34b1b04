"""The dimension laws, the transfer theory's central claim, checked across tasks of different dimensions.

Once h is learned from the source and frozen, the target's estimation error lives in d_h + d_x dimensions,
not d_c + d_x. At fixed n_t and n_s:

- oracle KL and transfer's head term (KL above the floor) do not depend on d_c: equivalence within a factor
  ``margin`` (two one-sided tests on the log ratio between the largest and the smallest d_c);
- no-transfer KL and the embedding floor (learned from n_s source pairs) grow with d_c;
- transfer KL grows with d_h (at fixed d_c);
- the sample-efficiency ratio (the target pairs no-transfer needs to match transfer) grows with d_c / d_h.

For an exactly fitted linear-Gaussian head the slopes themselves are predicted (:func:`predicted_slope`): the
pooled value KL x n_t is the known answer's E KL(n_t) x n_t, so direct's KL against d_c (p = d_c regressors), the
oracle's against d_h (p = d_h) and transfer's head term against d_h (p = rank = d_h, on a linear encoder, which
needs d_h <= d_x) have exact predicted log-log slopes, checked
TWO-sided (:func:`check_predicted_slope`): a flat curve, or one with the wrong slope, FAILs.

For a linear-Gaussian head the sizes are known: k = d_x (p + 1) + d_x (d_x + 1) / 2 free parameters with
p = d_h (oracle, transfer head term) or p = d_c (no-transfer on c), and E KL ~ k / 2n.

Tasks are told apart by the record keys ``task`` (a label), ``d_c`` and ``d_h``. Every (task, seed) is an
independent task instance with its own fits, so each claim is a least-squares slope of log value on log
dimension over all of them, with its t interval; "flat" is an equivalence test (two one-sided tests) on the
change that slope implies across the dimension's range, "grows" a one-sided test of a positive slope.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from theory.truth.known_answers import expected_kl_gaussian_regression, min_rows
from theory.verdicts.known_answer_check import applies, transfer_applies
from theory.verdicts.stats import MIN_SEEDS, t_tail
from theory.verdicts.verdict import INSUFFICIENT, INSUFFICIENT_SEEDS, CheckResult, Record, fmt, ok_records

#: The relative slope error an exact-slope check must be able to see (power 0.8) before it may pass.
SLOPE_MARGIN = 0.5


def by_dimension(
    records: Sequence[Record],
    head: str,
    variant: str,
    axis: str,
    fixed: dict[str, int],
    n_t: int | None,
    key: str = "kl",
    n_s: int | None = None,
) -> dict[int, list[float]]:
    """{value of ``axis``: one value of ``key`` per (task, seed)}, among tasks matching ``fixed``.

    At one ``n_t`` the value is the record's; with ``n_t=None`` it pools every n_t of the seed: the mean of
    KL x n_t (an estimate of the constant k/2 of a k/2n law; the plain mean for the floor, which has no n_t).
    """
    pooled: dict[tuple[int, str, int], list[float]] = {}
    for r in ok_records(records):
        if r["head"] != head or r["variant"] != variant or r.get(key) is None or r.get(axis) is None:
            continue
        if (n_t is not None and int(r["n_t"]) != n_t) or (n_s is not None and r.get("n_s") not in (None, n_s)):
            continue
        if any(r.get(k) != v for k, v in fixed.items()) or not math.isfinite(float(r[key])):
            continue
        scale = 1.0 if n_t is not None or key == "floor" else float(r["n_t"])
        pooled.setdefault((int(r[axis]), r.get("task", ""), int(r["seed"])), []).append(float(r[key]) * scale)
    out: dict[int, list[float]] = {}
    for (value, _task, _seed), vs in sorted(pooled.items()):
        out.setdefault(value, []).append(float(np.mean(vs)))
    return out


def log_slope(values: dict[int, list[float]]) -> tuple[float, float, int]:
    """OLS slope of log value on log(axis value) over every (task, seed) point: (slope, SE, degrees of freedom).

    Points with a non-positive value are left out (a log needs a positive value)."""
    pts = [(math.log(k), math.log(v)) for k, vs in values.items() for v in vs if v > 0]
    if len({x for x, _ in pts}) < 2 or len(pts) < 3:
        return math.nan, math.nan, 0
    return ols_slope(np.array([p[0] for p in pts]), np.array([p[1] for p in pts]))


def ols_slope(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """Least-squares slope of y on x (n,), its SE and n - 2 degrees of freedom (SE NaN when n <= 2)."""
    slope, icpt = np.polyfit(x, y, 1)
    resid = y - (slope * x + icpt)
    df = len(x) - 2
    se = math.sqrt(float(resid @ resid) / df / float(((x - x.mean()) ** 2).sum())) if df > 0 else math.nan
    return float(slope), se, df


def _two_ends(values: dict[int, list[float]]) -> tuple[int, int] | None:
    if len(values) < 2:
        return None
    return min(values), max(values)


def check_dimension_effect(
    records: Sequence[Record],
    head: str,
    variant: str,
    axis: str,
    fixed: dict[str, int],
    n_t: int | None,
    *,
    law: str,
    key: str = "kl",
    margin: float = 1.5,
    n_s: int | None = None,
    confidence: float = 0.95,
) -> CheckResult:
    """``law`` = "flat" (equivalence within ``margin``) or "grows" (log ratio > 0) of ``key`` along ``axis``."""
    what = {"kl": "KL", "head_term": "head term KL - floor", "floor": "embedding floor"}[key]
    name = f"{what} of {variant} {'flat in' if law == 'flat' else 'grows with'} {axis}"
    pooled = "" if n_t is not None or key == "floor" else " (pooled: mean of value x n_t over n_t)"
    scope = (
        f"{head}, "
        + ", ".join(f"{k}={v}" for k, v in fixed.items())
        + (f", n_t={n_t}" if n_t is not None else ", every n_t")
        + (f", n_s={n_s}" if n_s is not None else "")
    )
    if law == "flat":
        hyp = (
            f"{what} does not depend on {axis}: across the {axis} range it changes by a factor within "
            f"[1/{margin:g}, {margin:g}]"
        )
        stat = (
            f"least-squares slope of log value{pooled} on log {axis} over every (task, seed), t with n - 2 "
            "degrees of freedom; two one-sided tests on the implied change across the range"
        )
    else:
        hyp = f"{what} grows with {axis}"
        stat = (
            f"least-squares slope of log value{pooled} on log {axis} over every (task, seed), t with n - 2 "
            "degrees of freedom; one-sided test of slope > 0"
        )
    values = by_dimension(records, head, variant, axis, fixed, n_t, key, n_s)
    ends = _two_ends(values)
    if ends is None:
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            f"needs records at >= 2 values of {axis}, have {sorted(values)}",
            hypothesis=hyp,
            statistic=stat,
        )
    lo, hi = ends
    seeds = min(len(v) for v in values.values())
    means = ", ".join(f"{axis}={k}: {fmt(float(np.mean(v)), 3)}" for k, v in values.items())
    if seeds < MIN_SEEDS:
        return CheckResult(name, scope, INSUFFICIENT_SEEDS, means, hypothesis=hyp, statistic=stat)
    slope, se, df = log_slope(values)
    if not math.isfinite(se):
        return CheckResult(
            name, scope, INSUFFICIENT, f"{means}; too few positive values", hypothesis=hyp, statistic=stat
        )
    span = math.log(hi / lo)  # the claim is about the change across the whole axis: ratio = (hi/lo)^slope
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * se
    summary = (
        f"means {means}; change across {axis} {lo}..{hi}: x{math.exp(slope * span):.3g} "
        f"[{math.exp((slope - half) * span):.3g}, {math.exp((slope + half) * span):.3g}] ({confidence:.0%}; "
        f"slope {slope:.3g} +- {se:.2g} on log {axis}, {df + 2} points)"
    )
    numbers = {
        "means": {k: float(np.mean(v)) for k, v in values.items()},
        "slope": slope,
        "se": se,
        "df": df,
        "ratio": math.exp(slope * span),
        "margin": margin,
    }
    if law == "flat":
        m = math.log(margin) / span
        p_pass = max(t_tail(slope + m, se, df), t_tail(m - slope, se, df))
        p_fail = min(1.0, 2 * min(t_tail(slope - m, se, df), t_tail(-m - slope, se, df)))
    else:
        p_pass, p_fail = t_tail(slope, se, df), t_tail(-slope, se, df)
    return CheckResult(name, scope, INSUFFICIENT, summary, numbers, hyp, stat, p_pass=p_pass, p_fail=p_fail)


def _expected_pooled(r: Record, key: str) -> float | None:
    """E[value x n_t] of one record under the known answer (None where it has none)."""
    d_x, n = int(r["d_x"]), int(r["n_t"])
    if key == "kl" and applies(r):
        p = int(r["d_c"] if r["variant"] == "direct" else r["d_h"])
        return expected_kl_gaussian_regression(n, d_x, p) * n if n >= min_rows(d_x, p) else None
    if key == "head_term" and transfer_applies(r) and r.get("floor_n"):
        p, floor_n = int(r["embed_dim"]), int(r["floor_n"])
        if min(n, floor_n) < min_rows(d_x, p):
            return None
        return (expected_kl_gaussian_regression(n, d_x, p) - expected_kl_gaussian_regression(floor_n, d_x, p)) * n
    return None


def predicted_slope(
    records: Sequence[Record],
    head: str,
    variant: str,
    axis: str,
    fixed: dict[str, int],
    key: str = "kl",
    n_s: int | None = None,
) -> float | None:
    """The exact log-log slope of the pooled value (mean of E KL x n_t over a task's n_t) against ``axis``, or
    None when some record has no known answer."""
    per_axis: dict[int, list[float]] = {}
    for r in ok_records(records):
        if r["head"] != head or r["variant"] != variant or any(r.get(k) != v for k, v in fixed.items()):
            continue
        if n_s is not None and r.get("n_s") not in (None, n_s):
            continue
        value = _expected_pooled(r, key)
        if value is None:
            return None
        per_axis.setdefault(int(r[axis]), []).append(value)
    if len(per_axis) < 2:
        return None
    xs = np.log(sorted(per_axis))
    ys = np.log([np.mean(per_axis[k]) for k in sorted(per_axis)])
    return float(np.polyfit(xs, ys, 1)[0])


def check_predicted_slope(
    records: Sequence[Record],
    head: str,
    variant: str,
    axis: str,
    fixed: dict[str, int],
    *,
    key: str = "kl",
    n_s: int | None = None,
    confidence: float = 0.95,
) -> CheckResult | None:
    """The measured log-log slope of the pooled value against ``axis`` equals its exact prediction (two-sided t);
    passes only when powered against a slope off by :data:`SLOPE_MARGIN` of itself. None without a prediction."""
    predicted = predicted_slope(records, head, variant, axis, fixed, key, n_s)
    if predicted is None:
        return None
    what = {"kl": "KL", "head_term": "head term KL - floor"}[key]
    name = f"{what} slope in {axis} equals its known answer"
    scope = f"{head}, {variant}, " + ", ".join(f"{k}={v}" for k, v in fixed.items()) + ", every n_t"
    hyp = (
        f"{what} x n_t of an exact linear-Gaussian fit is its known answer E KL(n_t) x n_t (p = "
        f"{'d_c' if variant == 'direct' else 'the embedding dimension'} regressors), so its log-log slope in "
        f"{axis} is predicted: neither flatter nor steeper"
    )
    stat = (
        f"least-squares slope of log(mean of {what} x n_t) on log {axis} over every (task, seed); two-sided t "
        "test against the exact slope"
    )
    values = by_dimension(records, head, variant, axis, fixed, None, key, n_s)
    seeds = min((len(v) for v in values.values()), default=0)
    if seeds < MIN_SEEDS:
        return CheckResult(
            name, scope, INSUFFICIENT_SEEDS, f"{seeds} seed(s) per {axis}", hypothesis=hyp, statistic=stat
        )
    slope, se, df = log_slope(values)
    if not math.isfinite(se):
        return CheckResult(name, scope, INSUFFICIENT, "too few positive values", hypothesis=hyp, statistic=stat)
    t_crit = float(sps.t.ppf(0.5 + confidence / 2, df))
    shift = SLOPE_MARGIN * abs(predicted) / se if se > 0 else math.inf
    power = float(sps.t.sf(t_crit - shift, df))
    summary = (
        f"slope {slope:.3f} +- {se:.2g} against the exact {predicted:.3f} over {axis} {sorted(values)} "
        f"({df + 2} points); power {power:.2f} against a slope off by {SLOPE_MARGIN:.0%}"
    )
    p_fail = min(1.0, 2 * min(t_tail(slope - predicted, se, df), t_tail(predicted - slope, se, df)))
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        {"slope": slope, "se": se, "predicted": predicted, "power": power},
        hyp,
        stat,
        p_pass=None,
        p_fail=p_fail,
        powered=power >= 0.8,
    )


def pairs_needed(no_transfer: dict[int, float], target_kl: float) -> float:
    """n_t at which a no-transfer curve {n_t: KL} reaches ``target_kl``: log-log interpolation inside the grid,
    a power-law fit outside it; NaN when the curve does not fall."""
    ns = sorted(no_transfer)
    ys = [no_transfer[n] for n in ns]
    for (n0, y0), (n1, y1) in zip(zip(ns, ys), zip(ns[1:], ys[1:])):
        if y0 >= target_kl >= y1 and y0 > 0 and y1 > 0 and y0 != y1:
            f = (math.log(y0) - math.log(target_kl)) / (math.log(y0) - math.log(y1))
            return math.exp(math.log(n0) + f * (math.log(n1) - math.log(n0)))
    pos = [(n, y) for n, y in zip(ns, ys) if y > 0]
    if len(pos) < 2 or target_kl <= 0:
        return math.nan
    slope, icpt = np.polyfit(np.log([n for n, _ in pos]), np.log([y for _, y in pos]), 1)
    return float(math.exp((math.log(target_kl) - icpt) / slope)) if slope < 0 else math.nan


def sample_efficiency(
    records: Sequence[Record], head: str, n_s: int, n_t: int, baseline: str = "no_transfer"
) -> list[tuple[float, float]]:
    """(d_c / d_h, pairs ``baseline`` needs / n_t to match transfer at n_t) per (task, seed)."""
    rs = ok_records(records)
    out = []
    keys = {(r.get("task", ""), int(r["seed"])) for r in rs if r["head"] == head and r["variant"] == "transfer"}
    for task, seed in sorted(keys):
        mine = [r for r in rs if r["head"] == head and r.get("task", "") == task and int(r["seed"]) == seed]
        tr = [r for r in mine if r["variant"] == "transfer" and r.get("n_s") == n_s and int(r["n_t"]) == n_t]
        curve = {int(r["n_t"]): float(r["kl"]) for r in mine if r["variant"] == baseline}
        if not tr or len(curve) < 2:
            continue
        need = pairs_needed(curve, float(tr[0]["kl"]))
        if math.isfinite(need) and need > 0:
            out.append((float(tr[0]["d_c"]) / float(tr[0]["d_h"]), need / n_t))
    return out


def check_efficiency_grows(
    records: Sequence[Record], head: str, n_s: int, n_t: int, *, baseline: str = "no_transfer", confidence: float = 0.95
) -> CheckResult:
    """The slope of log(sample-efficiency ratio) on log(d_c / d_h) across tasks and seeds is > 0."""
    name, scope = (
        "sample-efficiency ratio grows with d_c / d_h",
        f"{head}, {baseline} vs transfer, n_s={n_s}, n_t={n_t}",
    )
    hyp = (
        f"the pairs {baseline} needs to match transfer, per target pair transfer used, grow with d_c / d_h "
        "(learning on c pays for d_c, transfer for d_h)"
    )
    stat = (
        "least-squares slope of log ratio on log(d_c / d_h) over (task, seed) points, t test with n - 2 "
        "degrees of freedom; the ratio interpolates each seed's no-transfer curve (power-law fit outside it)"
    )
    pts = sample_efficiency(records, head, n_s, n_t, baseline)
    xs = sorted({x for x, _ in pts})
    if len(xs) < 2 or len(pts) < 4:
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            f"needs >= 2 values of d_c / d_h and >= 4 points, have {len(xs)} and {len(pts)}",
            hypothesis=hyp,
            statistic=stat,
        )
    slope, se, df = ols_slope(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]))
    by_x = {f"{v:g}": float(np.exp(np.mean([np.log(r) for xx, r in pts if xx == v]))) for v in xs}
    summary = (
        f"geometric-mean ratio by d_c/d_h {{{', '.join(f'{k}: {v:.3g}' for k, v in by_x.items())}}}; "
        f"slope {slope:.3g} +- {fmt(se, 2)} ({len(pts)} points)"
    )
    numbers = {"ratios": by_x, "slope": slope, "se": se, "points": len(pts)}
    if len({int(round(p[0])) for p in pts}) < 2:
        return CheckResult(name, scope, INSUFFICIENT, summary, numbers, hyp, stat)
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        numbers,
        hyp,
        stat,
        p_pass=t_tail(slope, se, df),
        p_fail=t_tail(-slope, se, df),
    )


def run_dimension_checks(
    records: Sequence[Record],
    head: str,
    *,
    n_t: int | None,
    n_s: int,
    d_h_fixed: int,
    d_c_fixed: int,
    margin: float = 1.5,
    confidence: float = 0.95,
) -> list[CheckResult]:
    """Every dimension law the records allow for ``head`` (see the module docstring).

    ``n_t=None`` pools every n_t of a seed (KL x n_t averaged: more precise for k/2n laws); the
    sample-efficiency ratio is taken at the smallest n_t against ``direct`` (regression on c) when the records
    have it, else against ``no_transfer``."""
    rs = ok_records(records)
    variants = {r["variant"] for r in rs if r["head"] == head}
    kw: dict[str, Any] = {"margin": margin, "confidence": confidence}
    along_dc, along_dh = {"d_h": d_h_fixed}, {"d_c": d_c_fixed}
    out = []
    if "oracle" in variants:
        out.append(check_dimension_effect(rs, head, "oracle", "d_c", along_dc, n_t, law="flat", **kw))
    if "transfer" in variants:
        out.append(
            check_dimension_effect(
                rs, head, "transfer", "d_c", along_dc, n_t, law="flat", key="head_term", n_s=n_s, **kw
            )
        )
        out.append(
            check_dimension_effect(rs, head, "transfer", "d_c", along_dc, n_t, law="grows", key="floor", n_s=n_s, **kw)
        )
        out.append(check_dimension_effect(rs, head, "transfer", "d_h", along_dh, n_t, law="grows", n_s=n_s, **kw))
    for variant in ("no_transfer", "direct"):
        if variant in variants:
            out.append(check_dimension_effect(rs, head, variant, "d_c", along_dc, n_t, law="grows", **kw))
    exact = []
    if "direct" in variants:
        exact.append(check_predicted_slope(rs, head, "direct", "d_c", along_dc, confidence=confidence))
    if "oracle" in variants:  # the head on the true embedding: p = d_h regressors
        exact.append(check_predicted_slope(rs, head, "oracle", "d_h", along_dh, confidence=confidence))
    if "transfer" in variants:  # on a linear encoder (reduced-rank regression) only: d_h <= d_x
        exact.append(
            check_predicted_slope(
                rs, head, "transfer", "d_h", along_dh, key="head_term", n_s=n_s, confidence=confidence
            )
        )
    out += [c for c in exact if c is not None]
    baseline = "direct" if "direct" in variants else "no_transfer"
    if {"transfer", baseline} <= variants:
        smallest = min(int(r["n_t"]) for r in rs if r["head"] == head)
        out.append(check_efficiency_grows(rs, head, n_s, smallest, baseline=baseline, confidence=confidence))
    return out


def dimension_axes(records: Sequence[Record]) -> tuple[int | None, int | None]:
    """(d_h shared by the most tasks of different d_c, d_c shared by the most tasks of different d_h)."""
    dims = {(int(r["d_c"]), int(r["d_h"])) for r in ok_records(records) if r.get("d_c") is not None}

    def best(fixed_index: int) -> int | None:
        counts: dict[int, set[int]] = {}
        for d in dims:
            counts.setdefault(d[fixed_index], set()).add(d[1 - fixed_index])
        good = {k: len(v) for k, v in counts.items() if len(v) >= 2}
        return max(good, key=lambda k: (good[k], k)) if good else None

    return best(1), best(0)
