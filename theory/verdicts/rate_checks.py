"""Checks of the transfer theory's shape claims on one task: who wins, how fast KL falls, the floor.

Every statistic is a per-seed quantity (a seed is one independent replicate: its own task instance, data
and fits) summarised by a Student t interval over seeds; see :mod:`theory.verdicts.verdict` for how p-values become
verdicts. Seeds at every level are paired (the same seed's variants share data and evaluation sample).

- :func:`check_transfer_beats_no_transfer`: paired difference KL(no transfer) - KL(transfer) > 0 at the
  smallest n_t.
- :func:`check_exponent`: per-seed decay exponent in n_t (transfer: of the head term KL - floor) at least
  the predicted one (a template is an upper bound with unknown constant; a parametric head's exponent is 1).
- :func:`check_floor_falls`: per-seed decay exponent of the embedding floor in n_s at least the predicted one.
- :func:`check_catch_up`: no-transfer overtakes transfer at the largest n_t (the floor stops transfer).
- :func:`check_floor_is_floor`: transfer's head term KL - floor is not negative (the floor model is the best
  head on the frozen embedding).
- :func:`check_embedding_frozen`: transfer's encoder is bit for bit the source encoder (the split's premise).
- :func:`check_records_finite`: no finished cell carries a NaN or infinite KL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from theory.verdicts.stats import MIN_SEEDS, per_seed_exponents, t_interval, t_tail
from theory.verdicts.verdict import (
    INSUFFICIENT,
    INSUFFICIENT_SEEDS,
    INTEGRITY,
    KL_FIELDS,
    PRIMARY,
    CheckResult,
    Record,
    fmt,
    level_values,
    ok_records,
    series,
)


def _paired(a: dict[int, Record], b: dict[int, Record], key: str = "kl") -> list[float]:
    """Per-seed differences a - b over the seeds present in both."""
    return [float(a[s][key]) - float(b[s][key]) for s in sorted(set(a) & set(b))]


def _seeds_short(name: str, scope: str, have: int, hypothesis: str, statistic: str) -> CheckResult:
    return CheckResult(
        name,
        scope,
        INSUFFICIENT_SEEDS,
        f"{have} seed(s); a verdict needs >= {MIN_SEEDS}",
        hypothesis=hypothesis,
        statistic=statistic,
    )


# -- transfer beats no-transfer --------------------------------------------------------------------------
def check_transfer_beats_no_transfer(
    records: Sequence[Record], head: str, n_s: int, *, confidence: float = 0.95, task: str | None = None
) -> CheckResult:
    """At the smallest n_t with both variants: the paired per-seed gap KL(no_transfer) - KL(transfer) > 0."""
    name, scope = "transfer beats no-transfer at small n_t", f"{head}, n_s={n_s}"
    hyp = "with few target pairs, the frozen source embedding gives a lower KL than learning from the target alone"
    stat = "paired per-seed gap KL(no transfer) - KL(transfer) at the smallest n_t; one-sided t test over seeds"
    t, nt = series(records, head, "transfer", n_s, task=task), series(records, head, "no_transfer", task=task)
    common = sorted(set(t) & set(nt))
    if not common:
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            "no n_t with both transfer and no_transfer records",
            hypothesis=hyp,
            statistic=stat,
        )
    n_t = common[0]
    gaps = _paired(nt[n_t], t[n_t])
    if len(gaps) < MIN_SEEDS:
        return _seeds_short(name, scope, len(gaps), hyp, stat)
    iv = t_interval(gaps, confidence)
    summary = (
        f"n_t={n_t}: gap {fmt(iv.mean)} [{fmt(iv.low, 3)}, {fmt(iv.high, 3)}] nats ({confidence:.0%} t "
        f"interval, {iv.n} seeds)"
    )
    # the theory's headline claim, not a shape: it shares the primary tier with the known answers
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        {"n_t": n_t, **iv.to_dict()},
        hyp,
        stat,
        p_pass=iv.p_greater(0.0),
        p_fail=iv.p_less(0.0),
        tier=PRIMARY,
    )


# -- exponents -------------------------------------------------------------------------------------------
@dataclass
class SlopeFit:
    """Decay exponent r in y ~ C n^(-r): the mean of the per-seed exponents with its t interval.

    ``intercept`` is log C of the least-squares line through the seed means (for plotting).
    """

    exponent: float
    low: float
    high: float
    n_levels: int
    n_seeds: int
    intercept: float
    levels: list[int]
    se: float = math.nan


def fit_exponent(data: dict[int, dict[int, float]], *, confidence: float = 0.95, log_power: float = 0.0) -> SlopeFit:
    """Fit y ~ C n^(-r) (log n)^log_power to {n: {seed: y}}: per-seed OLS exponents, t interval over seeds.

    Levels where some seed's value is not positive are left out (a log needs a positive value).
    """
    adj = {n: {s: y / math.log(n) ** log_power for s, y in ys.items()} for n, ys in data.items()} if log_power else data
    per_seed, levels = per_seed_exponents(adj)
    if len(levels) < 2 or not per_seed:
        return SlopeFit(math.nan, math.nan, math.nan, len(levels), len(per_seed), math.nan, levels)
    x = np.log(np.asarray(levels, dtype=float))
    means = np.array([np.mean([adj[n][s] for s in per_seed]) for n in levels])
    intercept = float(np.polyfit(x, np.log(means), 1)[1])
    values = list(per_seed.values())
    if len(values) < 2:
        return SlopeFit(values[0], math.nan, math.nan, len(levels), 1, intercept, levels)
    iv = t_interval(values, confidence)
    return SlopeFit(iv.mean, iv.low, iv.high, len(levels), iv.n, intercept, levels, iv.se)


def check_exponent(
    records: Sequence[Record],
    head: str,
    variant: str,
    predicted: float | None,
    n_s: int | None = None,
    *,
    confidence: float = 0.95,
    log_power: float = 0.0,
    rate_label: str = "",
    task: str | None = None,
) -> CheckResult:
    """Per-seed decay exponent of ``variant`` in n_t >= ``predicted`` (transfer: of the head term)."""
    has_head = variant == "transfer" and any(
        r.get("head_term") is not None
        for lv in series(records, head, variant, n_s, task=task).values()
        for r in lv.values()
    )
    key = "head_term" if has_head else "kl"
    quantity = "KL - floor" if has_head else "KL"
    scope = f"{head}, {variant}" + (f", n_s={n_s}" if n_s is not None and variant in ("transfer", "fine_tune") else "")
    name = "measured exponent >= predicted"
    hyp = (
        f"E[{quantity}] falls at least like n_t^-r with the predicted r ({rate_label or 'rate function'}); "
        "an upper bound, so a faster decay is consistent"
    )
    stat = (
        f"per-seed least-squares slope of log({quantity}"
        + (f" / (log n_t)^{log_power:g}" if log_power else "")
        + ") on log n_t; one-sided t test over seeds"
    )
    fit = fit_exponent(
        level_values(series(records, head, variant, n_s, key, task), key), confidence=confidence, log_power=log_power
    )
    numbers = {"quantity": quantity, "predicted": predicted, **asdict(fit)}
    pred = "none" if predicted is None else f"{predicted:.3g}"
    summary = (
        f"over n_t {fit.levels}: exponent {fmt(fit.exponent, 3)} [{fmt(fit.low, 3)}, {fmt(fit.high, 3)}] "
        f"({confidence:.0%} t interval, {fit.n_seeds} seeds); predicted {pred}"
    )
    if predicted is None:
        return CheckResult(name, scope, INSUFFICIENT, summary + " (no prediction)", numbers, hyp, stat)
    if fit.n_levels < 3:
        return CheckResult(
            name, scope, INSUFFICIENT, summary + " (needs >= 3 n_t levels with positive values)", numbers, hyp, stat
        )
    if fit.n_seeds < MIN_SEEDS:
        return CheckResult(name, scope, INSUFFICIENT_SEEDS, summary, numbers, hyp, stat)
    p_pass = t_tail(fit.exponent - predicted, fit.se, fit.n_seeds - 1)
    p_fail = t_tail(predicted - fit.exponent, fit.se, fit.n_seeds - 1)
    return CheckResult(name, scope, INSUFFICIENT, summary, numbers, hyp, stat, p_pass=p_pass, p_fail=p_fail)


# -- the floor -------------------------------------------------------------------------------------------
def floors(records: Sequence[Record], head: str, task: str | None = None) -> dict[int, dict[int, float]]:
    """{n_s: {seed: floor}} from transfer records (one floor per source model)."""
    out: dict[int, dict[int, float]] = {}
    for r in ok_records(records):
        if (
            r["head"] == head
            and r["variant"] == "transfer"
            and r.get("floor") is not None
            and (task is None or r.get("task", "") == task)
        ):
            out.setdefault(int(r["n_s"]), {})[int(r["seed"])] = float(r["floor"])
    return dict(sorted(out.items()))


def check_floor_falls(
    records: Sequence[Record],
    head: str,
    predicted: float | None = None,
    *,
    confidence: float = 0.95,
    task: str | None = None,
) -> CheckResult:
    """The per-seed decay exponent of the embedding floor in n_s is at least ``predicted`` (None: > 0)."""
    name, scope = "embedding floor falls as n_s grows", head
    target = 0.0 if predicted is None else predicted
    hyp = (
        f"the embedding learned from n_s source pairs approaches a sufficient one: floor(n_s) falls at least "
        f"like n_s^-{target:.3g}"
    )
    stat = "per-seed least-squares slope of log floor on log n_s; one-sided t test over seeds"
    fl = floors(records, head, task)
    if len(fl) < 2:
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            f"needs floors at >= 2 values of n_s, have {sorted(fl)}",
            hypothesis=hyp,
            statistic=stat,
        )
    fit = fit_exponent(fl, confidence=confidence)
    per = ", ".join(f"n_s={n}: {fmt(float(np.mean(list(d.values()))))}" for n, d in fl.items())
    summary = (
        f"mean floor {per}; exponent {fmt(fit.exponent, 3)} [{fmt(fit.low, 3)}, {fmt(fit.high, 3)}] "
        f"({confidence:.0%} t interval, {fit.n_seeds} seeds); predicted {target:.3g}"
    )
    numbers = {"floors": {str(n): d for n, d in fl.items()}, "predicted": target, **asdict(fit)}
    if fit.n_seeds < MIN_SEEDS:
        return CheckResult(name, scope, INSUFFICIENT_SEEDS, summary, numbers, hyp, stat)
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        numbers,
        hyp,
        stat,
        p_pass=t_tail(fit.exponent - target, fit.se, fit.n_seeds - 1),
        p_fail=t_tail(target - fit.exponent, fit.se, fit.n_seeds - 1),
    )


def check_catch_up(
    records: Sequence[Record], head: str, n_s: int, *, confidence: float = 0.95, task: str | None = None
) -> CheckResult:
    """No-transfer overtakes transfer at the largest n_t (pass); the gap growing with n_t is a FAIL."""
    name, scope = "no-transfer catches up at large n_t", f"{head}, n_s={n_s}"
    hyp = "transfer stops at its embedding floor, so with enough target pairs learning from the target alone wins"
    stat = (
        "paired per-seed gap KL(no transfer) - KL(transfer) at the largest n_t (pass: < 0); its change from the "
        "smallest n_t (fail: grows); one-sided t tests over seeds"
    )
    t, nt = series(records, head, "transfer", n_s, task=task), series(records, head, "no_transfer", task=task)
    common = sorted(set(t) & set(nt))
    if len(common) < 2:
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            "needs >= 2 n_t with both transfer and no_transfer",
            hypothesis=hyp,
            statistic=stat,
        )
    first, last = _paired(nt[common[0]], t[common[0]]), _paired(nt[common[-1]], t[common[-1]])
    if min(len(first), len(last)) < MIN_SEEDS:
        return _seeds_short(name, scope, min(len(first), len(last)), hyp, stat)
    end = t_interval(last, confidence)
    change = t_interval([b - a for a, b in zip(first, last)], confidence)
    gaps = {n: float(np.mean(_paired(nt[n], t[n]))) for n in common}
    summary = (
        f"mean gap by n_t {{{', '.join(f'{n}: {fmt(g, 3)}' for n, g in gaps.items())}}}; at n_t={common[-1]}: "
        f"{fmt(end.mean, 3)} [{fmt(end.low, 3)}, {fmt(end.high, 3)}]; change {fmt(change.mean, 3)}"
    )
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        {"gaps": gaps, "last": end.to_dict(), "change": change.to_dict()},
        hyp,
        stat,
        p_pass=end.p_less(0.0),
        p_fail=change.p_greater(0.0),
    )


def check_floor_is_floor(
    records: Sequence[Record], head: str, n_s: int, *, margin: float = 0.1, task: str | None = None
) -> CheckResult:
    """Transfer's head term KL - floor >= 0 in every cell (Bonferroni over cells, one-sided)."""
    name, scope = "floor is a floor (head term >= 0)", f"{head}, n_s={n_s}"
    hyp = (
        "no head on the frozen embedding beats p(x | h_hat(c)), so KL(transfer) >= KL(floor model) up to the "
        "floor model's own error"
    )
    stat = (
        "per cell, head term = KL(transfer) - KL(floor model) on ONE evaluation sample with its paired SE; "
        "smallest one-sided p-value of a negative head term, times the number of cells"
    )
    rs = [
        r
        for r in ok_records(records)
        if r["head"] == head
        and r["variant"] == "transfer"
        and r.get("n_s") == n_s
        and r.get("head_term") is not None
        and (task is None or r.get("task", "") == task)
    ]
    if not rs:
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            "no transfer records with a floor (set evaluation.floor_n > 0)",
            hypothesis=hyp,
            statistic=stat,
        )
    ps = [t_tail(-float(r["head_term"]), float(r["head_term_se"]), 10**6) for r in rs]
    p_fail = min(1.0, min(ps) * len(rs))
    worst = min(rs, key=lambda r: float(r["head_term"]))
    floor_mean = float(np.mean([r["floor"] for r in rs]))
    se_med = float(np.median([r["head_term_se"] for r in rs]))
    powered = se_med <= margin * max(floor_mean, 1e-12)
    summary = (
        f"{len(rs)} cells; smallest head term {fmt(float(worst['head_term']), 3)} +- "
        f"{fmt(float(worst['head_term_se']), 2)} (n_t={worst['n_t']}, seed {worst['seed']}); median SE "
        f"{fmt(se_med, 2)} vs {margin:.0%} of the mean floor {fmt(floor_mean, 3)}"
    )
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        {"cells": len(rs), "p_min": min(ps)},
        hyp,
        stat,
        p_pass=None,
        p_fail=p_fail,
        powered=powered,
    )


def check_embedding_frozen(records: Sequence[Record], head: str) -> CheckResult:
    """Every transfer cell's encoder digest equals its source encoder's digest."""
    name, scope = "transfer keeps the source embedding", head
    hyp = "the target head sits on the source encoder, frozen: the premise of the KL split"
    stat = "SHA-256 of the transfer model's encoder weights against the source model's, per cell"
    rs = [r for r in ok_records(records) if r["head"] == head and r["variant"] == "transfer"]
    have = [r for r in rs if r.get("encoder_digest") and r.get("source_encoder_digest")]
    if not have:
        return CheckResult(
            name, scope, INSUFFICIENT, "no transfer records with encoder digests", hypothesis=hyp, statistic=stat
        )
    bad = [r for r in have if r["encoder_digest"] != r["source_encoder_digest"]]
    summary = f"{len(have) - len(bad)}/{len(have)} transfer cells carry the source encoder unchanged"
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        {"cells": len(have), "changed": len(bad)},
        hyp,
        stat,
        p_pass=0.0 if not bad else 1.0,
        p_fail=0.0 if bad else 1.0,
        tier=INTEGRITY,
    )


def check_records_finite(records: Sequence[Record]) -> CheckResult:
    """Every finished cell's KL fields are finite numbers."""
    name, scope = "records are finite", "all"
    hyp = "a finished cell carries a finite KL and SE (NaN or inf is a defect, never a result)"
    stat = "count of finished records with a non-finite KL field"
    bad = [
        r
        for r in ok_records(records)
        if any(r.get(k) is not None and not math.isfinite(float(r[k])) for k in (*KL_FIELDS, "kl_se"))
    ]
    where = "; ".join(f"{r['head']} {r['variant']} n_t={r['n_t']} seed={r['seed']}" for r in bad[:3])
    summary = f"{len(bad)} of {len(ok_records(records))} finished records non-finite" + (f" ({where})" if bad else "")
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        {"non_finite": len(bad)},
        hyp,
        stat,
        p_pass=0.0 if not bad else 1.0,
        p_fail=0.0 if bad else 1.0,
        tier=INTEGRITY,
    )
