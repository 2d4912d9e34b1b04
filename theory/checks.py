"""The theory's claims checked against sweep records, each with its numbers and a verdict.

Verdicts: ``pass``, ``fail`` or ``insufficient data`` (too few seeds or grid points, or an interval that
contains the threshold). "Beyond the standard error" means by more than ``z`` combined standard errors
(``z = 2`` by default); when one check compares many cells the ``z`` is Bonferroni-adjusted to keep the
same overall false-alarm rate. Standard errors are across seeds when there are at least two, else the
Monte Carlo SE of the single KL estimate.

- :func:`check_transfer_beats_no_transfer`: at the smallest n_t, KL(no transfer) - KL(transfer) > z SE.
- :func:`check_exponent`: the least-squares slope of log KL (transfer: log(KL - floor), the head term)
  against log n_t, with a bootstrap confidence interval over seeds (>= 3 seeds), is at least the predicted
  exponent: pass when the whole interval is at or above it, fail when the whole interval is below it.
- :func:`check_floor_falls`: the embedding floor at the largest n_s is below the one at the smallest n_s.
- :func:`check_catch_up`: after a significant gap at the smallest n_t, the no-transfer curve reaches the
  transfer curve within the grid (the crossover n_t, interpolated in log n_t); otherwise the crossover is
  extrapolated from power-law fits (verdict: insufficient data), and a gap that grows is a fail.
- :func:`check_girsanov`: for diffusion heads, the Girsanov bound is above the measured KL in every cell.
- :func:`check_kl_split`: KL = floor + head term, with the floor scored on its own sample, and the head
  term is not negative (the floor is a floor).

Example:
    >>> results = run_checks(records, config)
    >>> print(format_checks(results))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from shared_embed.errors import DataError

from .rates import Rates

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient data"
#: Seeds needed before a bootstrap interval over seeds decides a verdict (2 seeds give 3 distinct resamples).
MIN_SEEDS = 3
Record = dict[str, Any]


@dataclass
class CheckResult:
    """One check: what, where (head and n_s), the verdict, a one-line summary of its numbers and the numbers."""

    name: str
    scope: str
    verdict: str
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- grouping records ------------------------------------------------------------------------------------
def ok_records(records: Sequence[Record]) -> list[Record]:
    """Records of cells that finished (failed cells carry no KL)."""
    return [r for r in records if r.get("status", "ok") == "ok" and r.get("kl") is not None]


def series(records: Sequence[Record], head: str, variant: str, n_s: int | None = None,
           key: str = "kl") -> dict[int, dict[int, Record]]:
    """{n_t: {seed: record}} for one head and variant; ``n_s`` is used by source variants only."""
    out: dict[int, dict[int, Record]] = {}
    for r in ok_records(records):
        if r["head"] != head or r["variant"] != variant or r.get(key) is None:
            continue
        if r.get("n_s") is not None and n_s is not None and r["n_s"] != n_s:
            continue
        out.setdefault(int(r["n_t"]), {})[int(r["seed"])] = r
    return dict(sorted(out.items()))


def mean_se(values: Sequence[float], mc_ses: Sequence[float] = ()) -> tuple[float, float]:
    """Mean and its SE: across values when there are >= 2, else the pooled Monte Carlo SE."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        raise DataError("mean_se needs at least one value")
    if v.size >= 2:
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    mc = np.asarray(mc_ses, dtype=float)
    return float(v.mean()), float(math.sqrt((mc**2).sum()) / v.size) if mc.size else float("nan")


def level_stats(level: dict[int, Record], key: str = "kl") -> tuple[float, float, int]:
    """(mean, SE, seeds) of ``key`` over the seeds of one n_t."""
    rs = list(level.values())
    mean, se = mean_se([r[key] for r in rs], [r.get(f"{key}_se", float("nan")) for r in rs])
    return mean, se, len(rs)


def bonferroni_z(z: float, m: int) -> float:
    """The z that keeps the two-sided false-alarm rate of one z-test when m tests are made."""
    alpha = 2 * (1 - NormalDist().cdf(z))
    return NormalDist().inv_cdf(1 - alpha / (2 * max(m, 1)))


def z_score(diff: float, se: float) -> float:
    """diff / se; +-inf for a nonzero diff with se = 0; nan when undefined."""
    if not math.isfinite(se):
        return math.nan
    if se > 0:
        return diff / se
    return math.copysign(math.inf, diff) if diff else math.nan


def _verdict(zscore: float, z: float) -> str:
    return PASS if zscore > z else FAIL if zscore < -z else INSUFFICIENT


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


# -- 1. transfer beats no-transfer ---------------------------------------------------------------------
def check_transfer_beats_no_transfer(records: Sequence[Record], head: str, n_s: int, z: float = 2.0) -> CheckResult:
    """At the smallest n_t with both variants: KL(no_transfer) - KL(transfer) beyond z combined SE."""
    name, scope = "transfer beats no-transfer at small n_t", f"{head}, n_s={n_s}"
    t, nt = series(records, head, "transfer", n_s), series(records, head, "no_transfer")
    common = sorted(set(t) & set(nt))
    if not common:
        return CheckResult(name, scope, INSUFFICIENT, "no n_t with both transfer and no_transfer records")
    n_t = common[0]
    mt, st, _ = level_stats(t[n_t])
    mn, sn, _ = level_stats(nt[n_t])
    diff, se = mn - mt, math.hypot(st, sn)
    zscore = z_score(diff, se)
    verdict = _verdict(zscore, z)
    wins = [n for n in common if level_stats(nt[n])[0] > level_stats(t[n])[0]]
    summary = (f"n_t={n_t}: no-transfer {_fmt(mn)} +- {_fmt(sn, 2)} vs transfer {_fmt(mt)} +- {_fmt(st, 2)}; "
               f"difference {_fmt(diff)} = {_fmt(zscore, 3)} SE (need > {z:g}); transfer lower at n_t in {wins}")
    return CheckResult(name, scope, verdict, summary, {
        "n_t": n_t, "transfer": mt, "transfer_se": st, "no_transfer": mn, "no_transfer_se": sn,
        "difference": diff, "se": se, "z": zscore, "transfer_lower_at": wins})


# -- 2. exponents ----------------------------------------------------------------------------------------
@dataclass
class SlopeFit:
    """exponent = -slope of log y on log n (OLS on the seed means), with a bootstrap interval over seeds."""

    exponent: float
    low: float
    high: float
    n_levels: int
    n_seeds: int
    intercept: float
    levels: list[int]


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(x, y, 1)
    return float(slope), float(intercept)


def fit_exponent(
    data: dict[int, dict[int, float]], *, bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0,
) -> SlopeFit:
    """Fit y ~ C n^(-r) to {n: {seed: y}} on levels whose seed-mean is positive; bootstrap seeds for r's CI.

    Seeds are resampled with replacement (the same draw of seed labels at every level, since one seed is one
    run of the whole curve); resamples with a non-positive mean at some level are dropped.
    """
    levels = [n for n, ys in sorted(data.items()) if ys and np.mean(list(ys.values())) > 0]
    if len(levels) < 2:
        return SlopeFit(math.nan, math.nan, math.nan, len(levels), 0, math.nan, levels)
    seeds = sorted(set.intersection(*(set(data[n]) for n in levels)))
    x = np.log(np.asarray(levels, dtype=float))
    means = np.array([np.mean(list(data[n].values())) for n in levels])
    slope, intercept = _ols(x, np.log(means))
    low = high = math.nan
    if len(seeds) >= 2:
        rng = np.random.default_rng(seed)
        table = np.array([[data[n][s] for s in seeds] for n in levels])  # (levels, seeds)
        draws = rng.integers(0, len(seeds), size=(bootstrap, len(seeds)))
        boot_means = table[:, draws].mean(axis=2).T  # (bootstrap, levels)
        keep = (boot_means > 0).all(axis=1)
        if keep.sum() >= 10:
            slopes = np.polyfit(x, np.log(boot_means[keep]).T, 1)[0]
            a = (1 - confidence) / 2
            low, high = float(-np.quantile(slopes, 1 - a)), float(-np.quantile(slopes, a))
    return SlopeFit(-slope, low, high, len(levels), len(seeds), intercept, levels)


def check_exponent(
    records: Sequence[Record], head: str, variant: str, predicted: float | None, n_s: int | None = None, *,
    bootstrap: int = 2000, confidence: float = 0.95,
) -> CheckResult:
    """Measured decay exponent of ``variant`` in n_t >= ``predicted`` (transfer: of the head term KL - floor)."""
    use_head_term = variant == "transfer" and any(
        r.get("head_term") is not None for lv in series(records, head, variant, n_s).values() for r in lv.values())
    key = "head_term" if use_head_term else "kl"
    quantity = "log(KL - floor)" if use_head_term else "log KL"
    scope = f"{head}, {variant}" + (f", n_s={n_s}" if n_s is not None and variant in ("transfer", "fine_tune") else "")
    name = "measured exponent >= predicted"
    data = {n: {s: r[key] for s, r in lv.items()} for n, lv in series(records, head, variant, n_s, key).items()}
    fit = fit_exponent(data, bootstrap=bootstrap, confidence=confidence)
    numbers = {"quantity": quantity, "predicted": predicted, **asdict(fit)}
    pred = "none" if predicted is None else f"{predicted:.3g}"
    summary = (f"slope of {quantity} vs log n_t over n_t {fit.levels}: exponent {_fmt(fit.exponent, 3)} "
               f"[{_fmt(fit.low, 3)}, {_fmt(fit.high, 3)}] ({confidence:.0%} bootstrap over {fit.n_seeds} seeds); "
               f"predicted {pred}")
    if predicted is None:
        return CheckResult(name, scope, INSUFFICIENT, summary + " (the template makes no prediction)", numbers)
    if fit.n_levels < 3 or fit.n_seeds < MIN_SEEDS or not math.isfinite(fit.low):
        return CheckResult(name, scope, INSUFFICIENT, summary + f" (a verdict needs >= 3 n_t levels with positive "
                           f"mean and >= {MIN_SEEDS} seeds)", numbers)
    verdict = PASS if fit.low >= predicted else FAIL if fit.high < predicted else INSUFFICIENT
    return CheckResult(name, scope, verdict, summary, numbers)


# -- 3. the floor falls with n_s -------------------------------------------------------------------------
def floors(records: Sequence[Record], head: str) -> dict[int, dict[int, tuple[float, float]]]:
    """{n_s: {seed: (floor, floor_se)}} from transfer records (one floor per source model)."""
    out: dict[int, dict[int, tuple[float, float]]] = {}
    for r in ok_records(records):
        if r["head"] == head and r["variant"] == "transfer" and r.get("floor") is not None:
            out.setdefault(int(r["n_s"]), {})[int(r["seed"])] = (float(r["floor"]), float(r["floor_se"]))
    return dict(sorted(out.items()))


def check_floor_falls(records: Sequence[Record], head: str, predicted: float | None = None, z: float = 2.0, *,
                      bootstrap: int = 2000, confidence: float = 0.95) -> CheckResult:
    """floor(smallest n_s) - floor(largest n_s) beyond z combined SE; the floor's slope in n_s for reference."""
    name, scope = "embedding floor falls as n_s grows", head
    fl = floors(records, head)
    if len(fl) < 2:
        return CheckResult(name, scope, INSUFFICIENT, f"needs floors at >= 2 values of n_s, have {sorted(fl)}")
    stats = {n: mean_se([v for v, _ in d.values()], [s for _, s in d.values()]) for n, d in fl.items()}
    lo, hi = min(fl), max(fl)
    diff = stats[lo][0] - stats[hi][0]
    se = math.hypot(stats[lo][1], stats[hi][1])
    zscore = z_score(diff, se)
    fit = fit_exponent({n: {s: v for s, (v, _) in d.items()} for n, d in fl.items()},
                       bootstrap=bootstrap, confidence=confidence)
    verdict = _verdict(zscore, z)
    per = ", ".join(f"n_s={n}: {_fmt(m)} +- {_fmt(s, 2)}" for n, (m, s) in stats.items())
    pred = "" if predicted is None else f"; predicted template exponent {predicted:.3g}"
    summary = (f"{per}; drop {_fmt(diff)} = {_fmt(zscore, 3)} SE (need > {z:g}); floor exponent in n_s "
               f"{_fmt(fit.exponent, 3)} [{_fmt(fit.low, 3)}, {_fmt(fit.high, 3)}]{pred}")
    return CheckResult(name, scope, verdict, summary, {
        "floors": {str(n): {"mean": m, "se": s} for n, (m, s) in stats.items()}, "drop": diff, "se": se,
        "z": zscore, "exponent": fit.exponent, "exponent_ci": [fit.low, fit.high], "predicted": predicted})


# -- 4. no-transfer catches up ---------------------------------------------------------------------------
def crossover_n_t(n_ts: Sequence[int], gaps: Sequence[float]) -> float | None:
    """The first n_t where the gap no_transfer - transfer reaches 0, interpolated linearly in log n_t."""
    for i, (n, g) in enumerate(zip(n_ts, gaps)):
        if g <= 0:
            if i == 0:
                return float(n)
            n0, g0 = n_ts[i - 1], gaps[i - 1]
            frac = g0 / (g0 - g)
            return float(math.exp(math.log(n0) + frac * (math.log(n) - math.log(n0))))
    return None


def extrapolated_crossover(no_transfer: dict[int, float], transfer_head: dict[int, float], floor: float,
                           limit: float = 1e9) -> float | None:
    """Where A n^-a (no-transfer fit) meets floor + B n^-b (transfer fit), beyond the grid; None if never."""
    if floor <= 0 or len(no_transfer) < 2 or len(transfer_head) < 2:
        return None
    pos = {n: v for n, v in transfer_head.items() if v > 0}
    if len(pos) < 2 or any(v <= 0 for v in no_transfer.values()):
        return None
    sa, ia = _ols(np.log(list(no_transfer)), np.log(list(no_transfer.values())))
    sb, ib = _ols(np.log(list(pos)), np.log(list(pos.values())))
    if sa >= 0:
        return None
    gap = lambda ln: math.exp(ia + sa * ln) - (floor + math.exp(ib + sb * ln))  # noqa: E731
    lo, hi = math.log(max(no_transfer)), math.log(limit)
    if gap(lo) <= 0 or gap(hi) > 0:
        return None
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gap(mid) > 0 else (lo, mid)
    return math.exp(hi)


def check_catch_up(records: Sequence[Record], head: str, n_s: int, z: float = 2.0) -> CheckResult:
    """After a significant gap at the smallest n_t, no-transfer reaches transfer within the grid: the crossover."""
    name, scope = "no-transfer catches up at large n_t", f"{head}, n_s={n_s}"
    t, nt = series(records, head, "transfer", n_s), series(records, head, "no_transfer")
    common = sorted(set(t) & set(nt))
    if len(common) < 2:
        return CheckResult(name, scope, INSUFFICIENT, "needs >= 2 n_t with both transfer and no_transfer")
    st = {n: level_stats(t[n]) for n in common}
    sn = {n: level_stats(nt[n]) for n in common}
    gaps = [sn[n][0] - st[n][0] for n in common]
    ses = [math.hypot(st[n][1], sn[n][1]) for n in common]
    cross = crossover_n_t(common, gaps)
    z0 = z_score(gaps[0], ses[0])
    numbers: dict[str, Any] = {"n_t": common, "gap": gaps, "gap_se": ses, "crossover_n_t": cross,
                               "initial_gap_z": z0}
    gap_txt = ", ".join(f"{n}: {_fmt(g, 3)} +- {_fmt(s, 2)}" for n, g, s in zip(common, gaps, ses))
    head = f"gap no-transfer - transfer by n_t {{{gap_txt}}}"
    if not z0 > z:
        return CheckResult(name, scope, INSUFFICIENT, f"{head}; transfer is not significantly better at the "
                           f"smallest n_t ({_fmt(z0, 3)} SE), so there is nothing to catch up", numbers)
    if cross is not None:
        return CheckResult(name, scope, PASS, f"{head}; crossover at n_t ~ {cross:.0f}", numbers)
    fl = [r["floor"] for lv in t.values() for r in lv.values() if r.get("floor") is not None]
    head_terms = {n: level_stats(t[n], "head_term")[0] for n in common
                  if all(r.get("head_term") is not None for r in t[n].values())}
    extra = extrapolated_crossover({n: sn[n][0] for n in common}, head_terms, float(np.mean(fl))) if fl else None
    numbers["extrapolated_crossover_n_t"] = extra
    growing = z_score(gaps[-1] - gaps[0], math.hypot(ses[0], ses[-1])) > z
    if growing:
        return CheckResult(name, scope, FAIL, f"{head}; the gap grows with n_t", numbers)
    where = (f"power-law fits (no transfer: A n^-a; transfer: floor + B n^-b) put it near n_t ~ {extra:.3g}"
             if extra is not None else "no crossover extrapolated (floor ~ 0 or no-transfer not decaying)")
    return CheckResult(name, scope, INSUFFICIENT, f"{head}; no crossover within the grid; {where}", numbers)


# -- 5. Girsanov bound (diffusion heads) -----------------------------------------------------------------
def check_girsanov(records: Sequence[Record], head: str, z: float = 2.0) -> CheckResult:
    """KL <= Girsanov bound in every cell that has one (Bonferroni-adjusted z)."""
    name, scope = "Girsanov bound holds over measured KL", head
    rs = [r for r in ok_records(records) if r["head"] == head and r.get("bound") is not None]
    if not rs:
        return CheckResult(name, scope, INSUFFICIENT, "no records with a Girsanov bound (diffusion heads only)")
    zm = bonferroni_z(z, len(rs))
    excess = [(r["kl"] - r["bound"]) / max(math.hypot(r["kl_se"], r.get("bound_se") or 0.0), 1e-300) for r in rs]
    violations = [r for r, e in zip(rs, excess) if e > zm]
    below = sum(r["kl"] <= r["bound"] for r in rs)
    ratios = [r["kl"] / r["bound"] for r in rs if r["bound"] > 0]
    tight = max(rs, key=lambda r: r["kl"] / r["bound"] if r["bound"] > 0 else math.inf)
    summary = (f"KL <= bound in {below}/{len(rs)} cells, {len(violations)} above it by > {zm:.2f} SE; "
               f"KL/bound median {_fmt(float(np.median(ratios)), 3) if ratios else 'nan'}, max "
               f"{_fmt(max(ratios), 3) if ratios else 'nan'} (n_t={tight['n_t']}, {tight['variant']}: KL "
               f"{_fmt(tight['kl'])} vs bound {_fmt(tight['bound'])})")
    return CheckResult(name, scope, FAIL if violations else PASS, summary, {
        "cells": len(rs), "below": below, "violations": len(violations), "z": zm,
        "ratio_median": float(np.median(ratios)) if ratios else None})


# -- 6. the KL split adds up -----------------------------------------------------------------------------
def check_kl_split(records: Sequence[Record], head: str, n_s: int, z: float = 2.0) -> CheckResult:
    """KL = floor (own sample) + head term within SE in every cell, and head term >= 0 within SE."""
    name, scope = "KL split adds up (floor + head term)", f"{head}, n_s={n_s}"
    rs = [r for r in ok_records(records) if r["head"] == head and r["variant"] == "transfer"
          and r.get("n_s") == n_s and r.get("head_term") is not None]
    if not rs:
        return CheckResult(name, scope, INSUFFICIENT, "no transfer records with a floor (set evaluation.floor_n > 0)")
    zm = bonferroni_z(z, 2 * len(rs))
    identity = max(abs(r["kl"] - r["floor_paired"] - r["head_term"]) for r in rs)
    resid = [(r["kl"] - r["floor"] - r["head_term"], math.hypot(r["floor_se"], r["floor_paired_se"])) for r in rs]
    bad_sum = [x for x, s in resid if abs(x) > zm * s]
    neg = [r for r in rs if r["head_term"] < -zm * r["head_term_se"]]
    worst = max(resid, key=lambda t: abs(t[0]) / t[1] if t[1] > 0 else 0.0)
    share = float(np.mean([r["floor"] / r["kl"] for r in rs if r["kl"] > 0]))
    summary = (f"{len(rs)} cells: |KL - (floor + head)| <= {zm:.2f} SE in {len(rs) - len(bad_sum)} (worst "
               f"{_fmt(worst[0], 3)} +- {_fmt(worst[1], 2)}; same-sample identity error {identity:.1e}); head "
               f"term >= 0 within SE in {len(rs) - len(neg)}; floor is {share:.0%} of KL on average")
    return CheckResult(name, scope, FAIL if bad_sum or neg else PASS, summary, {
        "cells": len(rs), "sum_mismatches": len(bad_sum), "negative_head_terms": len(neg), "z": zm,
        "identity_error": identity, "floor_share": share})


# -- all of them -----------------------------------------------------------------------------------------
def run_checks(
    records: Sequence[Record], rates: dict[str, Rates], *, z: float = 2.0, bootstrap: int = 2000,
    confidence: float = 0.95, head_kinds: dict[str, str] | None = None,
) -> list[CheckResult]:
    """Every check that the records allow, per head (and per n_s where it applies).

    Args:
        rates: head name -> predicted :class:`Rates` (e.g. from :func:`theory.rates.predicted_rates`).
        head_kinds: head name -> kind; the Girsanov check runs for ``"diffusion"`` heads.
    """
    rs = ok_records(records)
    out: list[CheckResult] = []
    kinds = head_kinds or {r["head"]: r.get("head_kind", r["head"]) for r in rs}
    for head in sorted({r["head"] for r in rs}):
        variants = {r["variant"] for r in rs if r["head"] == head}
        n_ss = sorted({int(r["n_s"]) for r in rs if r["head"] == head and r.get("n_s") is not None})
        rate = rates.get(head)
        boot = {"bootstrap": bootstrap, "confidence": confidence}
        if {"transfer", "no_transfer"} <= variants:
            out += [check_transfer_beats_no_transfer(rs, head, n, z) for n in n_ss]
        if "transfer" in variants:  # fine_tune has no prediction: its slope is in the report's exponent table
            out += [check_exponent(rs, head, "transfer", rate.transfer if rate else None, n, **boot) for n in n_ss]
        for variant in ("no_transfer", "oracle"):
            if variant in variants:
                out.append(check_exponent(rs, head, variant, rate.for_variant(variant) if rate else None, **boot))
        if "transfer" in variants:
            out.append(check_floor_falls(rs, head, rate.floor if rate else None, z, **boot))
        if {"transfer", "no_transfer"} <= variants:
            out += [check_catch_up(rs, head, n, z) for n in n_ss]
        if kinds.get(head) == "diffusion":
            out.append(check_girsanov(rs, head, z))
        if "transfer" in variants:
            out += [check_kl_split(rs, head, n, z) for n in n_ss]
    return out


def format_checks(results: Sequence[CheckResult]) -> str:
    """A Markdown table: check | scope | verdict | numbers."""
    lines = ["| check | scope | verdict | numbers |", "|---|---|---|---|"]
    for c in results:
        verdict = {PASS: "**pass**", FAIL: "**FAIL**"}.get(c.verdict, c.verdict)
        summary = c.summary.replace("|", "\\|")  # a literal | inside a Markdown table cell
        lines.append(f"| {c.name} | {c.scope} | {verdict} | {summary} |")
    return "\n".join(lines)
