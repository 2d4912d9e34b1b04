"""Two-sided known-answer checks: linear-Gaussian heads held to their exact laws, transfer included.

Where a variant fits a well-specified linear-Gaussian head by exact maximum likelihood on the linear conditional
Gaussian task, the whole law of its records under a correct pipeline is known and simulated exactly:

- ``oracle`` (regressors h*(c), p = d_h) and ``direct`` (regressors c, p = d_c): the KL at every n_t
  (:func:`theory.truth.known_answers.simulate_fitted_kls`, nested data as the sweep draws them);
- ``transfer`` with a LINEAR encoder (reduced-rank regression on the source): the floor model's KL, the transfer
  KL and the head term at every (n_s, n_t) (:func:`theory.truth.transfer_known_answer.simulate_transfer`, one law
  per task instance, since the floor depends on the instance's source Fisher information and target sensitivity).

Each check's statistic is a ratio R = mean over seeds and cells of measured / expected (expected 1), or the mean
per-seed decay exponent in n_t (expected: that of the exact finite-n curve, not 1). Its null law adds every
record's Monte Carlo SE; the verdict comes from the band of that law at the level the report's error control
assigns (:class:`theory.verdicts.simulated_law.Band`): FAIL outside, pass inside only when powered against a
factor 2 either way (ratios) or an exponent off by 0.5 (exponents: a plateau or a doubled slope). They catch a KL estimator off by a factor
or a constant, a truth with the wrong variance, a head that ignores its context, a source fit on fewer rows than
stated, an encoder that is not the source's, and a target fit on rows other than stated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from theory.truth.known_answers import expected_kl_gaussian_regression, min_rows, simulate_fitted_kls
from theory.truth.tasks import make_task
from theory.truth.transfer_known_answer import LinearTransferTruth, first_order_floor, simulate_transfer
from theory.verdicts.simulated_law import Band, per_seed_slopes, statistic_law
from theory.verdicts.stats import MIN_SEEDS
from theory.verdicts.verdict import (
    INSUFFICIENT,
    INSUFFICIENT_SEEDS,
    PRIMARY,
    SECONDARY,
    CheckResult,
    Record,
    fmt,
    ok_records,
    series,
)

__all__ = [
    "KNOWN_ANSWER_VARIANTS",
    "PARAMETRIC_KINDS",
    "applies",
    "check_known_answer",
    "check_known_exponent",
    "check_transfer_known_answers",
    "known_curves",
    "transfer_applies",
    "transfer_known_answer_table",
]

#: Variants whose head reads a Gaussian regressor of known dimension: variant -> record key of p.
KNOWN_ANSWER_VARIANTS = {"oracle": "d_h", "direct": "d_c"}
#: Head kinds that are well-specified linear-Gaussian heads with an exact maximum-likelihood fit.
PARAMETRIC_KINDS = ("linear_gaussian",)
#: The factor a ratio check and the exponent shift an exponent check must be able to see, to pass.
FACTOR, EXPONENT_SHIFT = 2.0, 0.5
REPS, TRANSFER_REPS = 2000, 600


def _linear_task(record: Record) -> bool:
    return (
        record.get("head_kind") in PARAMETRIC_KINDS
        and record.get("task_name") == "conditional_gaussian"
        and record.get("embedding") == "linear"
    )


def applies(record: Record) -> bool:
    """A record the oracle/direct known answer holds for: a linear-Gaussian head on the linear Gaussian task."""
    return _linear_task(record) and record.get("variant") in KNOWN_ANSWER_VARIANTS


def transfer_applies(record: Record) -> bool:
    """A transfer record with a known answer: linear-Gaussian heads on a linear encoder, linear Gaussian task."""
    encoder = (record.get("settings") or {}).get("encoder") or {}
    return (
        _linear_task(record)
        and record.get("variant") == "transfer"
        and encoder.get("hidden") == []
        and record.get("embed_dim") is not None
    )


def _ratio_band(
    per_seed: list[np.ndarray], observed: np.ndarray, expected: np.ndarray, mc_sd: np.ndarray, factor: float = FACTOR
) -> Band:
    """Band of R = mean(values / expected) over (seeds, cells), powered against ``factor`` either way."""
    null = statistic_law(per_seed, lambda v: (v / expected).mean(axis=(-2, -1)), mc_sd=mc_sd)
    return Band(
        null, float((observed / expected).mean()), {f"x{factor:g}": null * factor, f"x1/{factor:g}": null / factor}
    )


def _exponent_band(per_seed: list[np.ndarray], observed: np.ndarray, levels: Sequence[int], mc_sd: np.ndarray) -> Band:
    """Band of the mean over seeds of per-seed decay exponents, powered against a shift of 0.25 either way."""
    null = statistic_law(per_seed, lambda v: per_seed_slopes(v, levels).mean(-1), mc_sd=mc_sd)
    shift = EXPONENT_SHIFT
    return Band(
        null,
        float(np.mean(per_seed_slopes(observed, levels))),
        {f"+{shift:g}": null + shift, f"-{shift:g}": null - shift},
    )


def _result(
    name: str, scope: str, band: Band, summary: str, numbers: dict[str, Any], hyp: str, stat: str
) -> CheckResult:
    return CheckResult(
        name,
        scope,
        INSUFFICIENT,
        summary,
        {"statistic": band.observed, **numbers},
        hyp,
        stat,
        p_pass=None,
        p_fail=band.p_value(),
        tier=PRIMARY,
        band=band,
    )


def _grid(data: dict[int, dict[int, Record]], low: int) -> tuple[list[int], list[int]]:
    """(levels >= low, seeds present at all of them)."""
    levels = [n for n in data if n >= low]
    seeds = sorted(set.intersection(*(set(data[n]) for n in levels))) if levels else []
    return levels, seeds


def _fixed_context(
    records: Sequence[Record], head: str, variant: str, task: str | None, name: str, scope: str, hyp: str, stat: str
) -> tuple[CheckResult | None, Any]:
    """The oracle/direct inputs (levels, seeds, observed, mc_sd, sims, d_x, p), or an 'insufficient' result."""
    data = series(records, head, variant, task=task)
    rs = [r for lv in data.values() for r in lv.values()]
    if not rs or not all(applies(r) for r in rs):
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            "no known answer for these records (needs a linear_gaussian "
            "head, oracle or direct, on the linear conditional_gaussian task)",
            hypothesis=hyp,
            statistic=stat,
        ), None
    d_x, p = int(rs[0]["d_x"]), int(rs[0][KNOWN_ANSWER_VARIANTS[variant]])
    levels, seeds = _grid(data, min_rows(d_x, p))
    if not levels:
        return CheckResult(
            name,
            scope,
            INSUFFICIENT,
            f"every n_t is below the {min_rows(d_x, p)} rows the expected KL needs",
            hypothesis=hyp,
            statistic=stat,
        ), None
    if len(seeds) < MIN_SEEDS:
        return CheckResult(
            name, scope, INSUFFICIENT_SEEDS, f"{len(seeds)} seed(s) at every n_t", hypothesis=hyp, statistic=stat
        ), None
    observed = np.array([[float(data[n][s]["kl"]) for n in levels] for s in seeds])
    mc_sd = np.array([[float(data[n][s].get("kl_se") or 0.0) for n in levels] for s in seeds])
    sims = simulate_fitted_kls(levels, d_x, p, reps=REPS)
    return None, (levels, seeds, observed, mc_sd, [sims] * len(seeds), d_x, p)


def check_known_answer(
    records: Sequence[Record], head: str, variant: str, *, task: str | None = None, margin: float = FACTOR, **_: Any
) -> CheckResult:
    """Measured KL / exact E KL, averaged over seeds and n_t, inside the band of its exact law."""
    name, scope = "KL equals its known answer", f"{head}, {variant}" + (f", {task}" if task else "")
    hyp = (
        "a maximum-likelihood linear-Gaussian head on n rows has E KL = 1/2 [d n (1 + E q)/(m - d - 1) - d + "
        "sum psi((m - i + 1)/2) + d log(2/n)] (about k / 2n): the measured KL is neither above nor below it"
    )
    stat = "R = mean over seeds and n_t of KL / E KL, against its exact simulated law (nested data, Monte Carlo SE)"
    short, inputs = _fixed_context(records, head, variant, task, name, scope, hyp, stat)
    if short is not None:
        return short
    levels, seeds, observed, mc_sd, sims, d_x, p = inputs
    expected = np.array([expected_kl_gaussian_regression(n, d_x, p) for n in levels])
    band = _ratio_band(sims, observed, expected, mc_sd, margin)
    per_level = ", ".join(
        f"{n}: {fmt(float(observed[:, j].mean()), 3)} vs {fmt(float(expected[j]), 3)}" for j, n in enumerate(levels)
    )
    k = d_x * (p + 1) + d_x * (d_x + 1) // 2
    summary = f"R = {band.observed:.3f}, {{band}}; mean KL vs exact E KL by n_t {{{per_level}}}; p = {p}, k = {k}"
    numbers = {
        "ratio": band.observed,
        "expected": dict(zip(levels, expected.tolist())),
        "p": p,
        "d_x": d_x,
        "seeds": len(seeds),
    }
    return _result(name, scope, band, summary, numbers, hyp, stat)


def check_known_exponent(
    records: Sequence[Record], head: str, variant: str, *, task: str | None = None, **_: Any
) -> CheckResult:
    """The mean per-seed decay exponent of KL in n_t, two-sided against its exact finite-n law (not 'about 1')."""
    name, scope = "KL exponent equals its known answer", f"{head}, {variant}" + (f", {task}" if task else "")
    hyp = (
        "the exact finite-n curve E KL(n) of a maximum-likelihood linear-Gaussian head fixes how fast KL falls "
        "over this grid (steeper than 1 where n is close to the parameter count): neither slower nor faster"
    )
    stat = (
        "mean over seeds of minus the least-squares slope of log KL on log n_t, against its exact simulated law "
        "over the same grid"
    )
    short, inputs = _fixed_context(records, head, variant, task, name, scope, hyp, stat)
    if short is not None:
        return short
    levels, seeds, observed, mc_sd, sims, d_x, p = inputs
    if len(levels) < 3:
        return CheckResult(
            name, scope, INSUFFICIENT, f"needs >= 3 n_t levels, have {levels}", hypothesis=hyp, statistic=stat
        )
    band = _exponent_band(sims, observed, levels, mc_sd)
    curve = -np.polyfit(np.log(levels), np.log([expected_kl_gaussian_regression(n, d_x, p) for n in levels]), 1)[0]
    summary = (
        f"exponent {band.observed:.3f} over n_t {levels} ({len(seeds)} seeds), {{band}}; exact curve's "
        f"exponent {curve:.3f}, law median {float(np.median(band.null)):.3f}"
    )
    result = _result(
        name,
        scope,
        band,
        summary,
        {"exponent": band.observed, "curve_exponent": float(curve), "levels": levels, "seeds": len(seeds)},
        hyp,
        stat,
    )
    result.tier = SECONDARY  # a shape: the values themselves are the primary known answer
    return result


# -- transfer -------------------------------------------------------------------------------------------
def _task_truth(record: Record) -> LinearTransferTruth:
    """The task instance a record was scored against, rebuilt from its settings and task seed."""
    options = {
        k: v for k, v in (record.get("settings") or {}).get("task", {}).items() if k not in ("name", "instance", "seed")
    }
    return LinearTransferTruth.from_task(make_task("conditional_gaussian", **options, seed=int(record["task_seed"])))


class _TransferInputs:
    """A transfer head's records on one task label arranged as (seed, n_s, n_t), with each seed's exact law."""

    def __init__(self, rs: list[Record]) -> None:
        self.n_s = sorted({int(r["n_s"]) for r in rs})
        self.n_t = sorted({int(r["n_t"]) for r in rs})
        cell = {(int(r["seed"]), int(r["n_s"]), int(r["n_t"])): r for r in rs}
        self.seeds = [
            s
            for s in sorted({int(r["seed"]) for r in rs})
            if all((s, a, b) in cell for a in self.n_s for b in self.n_t)
        ]
        self.cell = cell
        first = rs[0]
        self.rank, self.floor_n = int(first["embed_dim"]), int(first.get("floor_n") or 0)
        self.sims = {}
        for s in self.seeds:
            truth = _task_truth(cell[(s, self.n_s[0], self.n_t[0])])
            self.sims[s] = (
                truth,
                simulate_transfer(
                    truth, self.n_s, self.n_t, max(self.floor_n, 2 * self.rank + 8), self.rank, reps=TRANSFER_REPS
                ),
            )

    def values(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Observed (seeds, cells) and Monte Carlo SDs of ``key`` over the (n_s, n_t) cells (floor: n_s only)."""
        grid = [(a, self.n_t[0]) for a in self.n_s] if key == "floor" else [(a, b) for a in self.n_s for b in self.n_t]
        obs = np.array([[float(self.cell[(s, a, b)][key]) for a, b in grid] for s in self.seeds])
        sd = np.array([[float(self.cell[(s, a, b)].get(f"{key}_se") or 0.0) for a, b in grid] for s in self.seeds])
        return obs, sd

    def law(self, key: str) -> list[np.ndarray]:
        """Per seed: exact draws (reps, cells) of ``key``."""
        fields: dict[str, Callable[[Any], np.ndarray]] = {
            "floor": lambda d: d.floor,
            "kl": lambda d: d.kl.reshape(d.kl.shape[0], -1),
            "head_term": lambda d: d.head_term.reshape(d.kl.shape[0], -1),
        }
        return [fields[key](self.sims[s][1]) for s in self.seeds]


TRANSFER_CHECKS = {
    "kl": (
        "transfer KL equals its known answer",
        "E KL_transfer(n_s, n_t) = E floor(n_s) + E KL_ML(n_t; p = rank, d = d_x): the embedding floor of the "
        "reduced-rank source encoder plus the exact known answer of the target head on it",
    ),
    "floor": (
        "embedding floor equals its known answer",
        "the floor model's KL = floor(W_hat) + E KL_ML(floor_n), floor(W_hat) = 1/2 log det(Sigma_floor "
        "Sigma_T^-1) with W_hat the reduced-rank estimate from n_s source pairs (about (d_c - d_h) / "
        "(2 n_s) tr(Sigma_T^-1 A_T Omega A_T^T) to first order)",
    ),
    "head_term": (
        "head term equals its known answer",
        "KL - floor = KL_ML(n_t) - KL_ML(floor_n): the target head on the frozen embedding is a "
        "well-specified Gaussian regression on p = rank regressors, whatever the encoder",
    ),
}


def check_transfer_known_answers(
    records: Sequence[Record], head: str, *, task: str | None = None, margin: float = FACTOR, **_: Any
) -> list[CheckResult]:
    """The three transfer known answers (KL, floor, head term) of one head, two-sided; [] when none applies."""
    rs = [
        r
        for r in ok_records(records)
        if r["head"] == head and transfer_applies(r) and (task is None or r.get("task", "") == task)
    ]
    if not rs:
        return []
    scope = head + (f", {task}" if task else "")
    stat = "R = mean over seeds and cells of measured / expected, against the exact simulated law of every seed"
    inputs = _TransferInputs(rs)
    out = []
    for key, (name, hyp) in TRANSFER_CHECKS.items():
        if key != "kl" and not inputs.floor_n:
            continue
        if len(inputs.seeds) < MIN_SEEDS:
            out.append(
                CheckResult(
                    name,
                    scope,
                    INSUFFICIENT_SEEDS,
                    f"{len(inputs.seeds)} seed(s) with every (n_s, n_t) cell",
                    hypothesis=hyp,
                    statistic=stat,
                )
            )
            continue
        obs, sd = inputs.values(key)
        law = inputs.law(key)
        expected = np.stack([sims.mean(0) for sims in law])  # (seeds, cells): each instance's own expectation
        band = _ratio_band(law, obs, expected, sd, margin)
        summary = (
            f"R = {band.observed:.3f}, {{band}}; mean measured vs expected "
            f"{fmt(float(obs.mean()), 3)} vs {fmt(float(expected.mean()), 3)} nats over {obs.shape[1]} "
            f"cells x {len(inputs.seeds)} seeds"
        )
        out.append(_result(name, scope, band, summary, {"ratio": band.observed, "seeds": len(inputs.seeds)}, hyp, stat))
    return out


def transfer_known_answer_table(records: Sequence[Record], head: str, task: str | None = None) -> str:
    """A Markdown table of transfer's known answer by (n_s, n_t): measured KL (mean ± SE over seeds) beside
    E floor (exact law and first order) + E KL_ML(n_t), the decomposition the checks test. "" when none applies."""
    rs = [
        r
        for r in ok_records(records)
        if r["head"] == head and transfer_applies(r) and (task is None or r.get("task", "") == task)
    ]
    if not rs:
        return ""
    inputs = _TransferInputs(rs)
    if not inputs.seeds:
        return ""
    lines = [
        "| n_s | n_t | measured KL | predicted E KL = E floor + E KL_ML(n_t) | E floor (exact law) | "
        "E floor (first order) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, a in enumerate(inputs.n_s):
        fl = float(np.mean([inputs.sims[s][1].true_floor[:, i].mean() for s in inputs.seeds]))
        first = (
            float(np.mean([first_order_floor(inputs.sims[s][0], a) for s in inputs.seeds]))
            if inputs.rank == inputs.sims[inputs.seeds[0]][0].d_h
            else float("nan")
        )
        for b in inputs.n_t:
            kl = [float(inputs.cell[(s, a, b)]["kl"]) for s in inputs.seeds]
            se = float(np.std(kl, ddof=1) / np.sqrt(len(kl))) if len(kl) > 1 else float("nan")
            pred = fl + expected_kl_gaussian_regression(b, inputs.sims[inputs.seeds[0]][0].d_x, inputs.rank)
            lines.append(
                f"| {a} | {b} | {fmt(float(np.mean(kl)), 4)} ± {fmt(se, 2)} | {fmt(pred, 4)} | "
                f"{fmt(fl, 4)} | {fmt(first, 4)} |"
            )
    return "\n".join(lines)


def known_curves(records: Sequence[Record], head: str) -> dict[tuple[str, int | None], tuple[list[int], list[float]]]:
    """The exact E KL curves of ``head``'s variants that have one: (variant, n_s) -> (n_t levels, E KL), for the
    plots. Oracle and direct: the Gaussian-regression formula; transfer: E floor(n_s) (its exact law, averaged
    over the seeds' task instances) + E KL_ML(n_t)."""
    out: dict[tuple[str, int | None], tuple[list[int], list[float]]] = {}
    ok = [r for r in ok_records(records) if r["head"] == head]
    for variant, key in KNOWN_ANSWER_VARIANTS.items():
        rs = [r for r in ok if r["variant"] == variant and applies(r)]
        if rs:
            d_x, p = int(rs[0]["d_x"]), int(rs[0][key])
            levels = sorted({int(r["n_t"]) for r in rs if int(r["n_t"]) >= min_rows(d_x, p)})
            out[(variant, None)] = (levels, [expected_kl_gaussian_regression(n, d_x, p) for n in levels])
    rs = [r for r in ok if transfer_applies(r)]
    if rs:
        inputs = _TransferInputs(rs)
        if inputs.seeds:
            d_x = inputs.sims[inputs.seeds[0]][0].d_x
            for i, a in enumerate(inputs.n_s):
                floor = float(np.mean([inputs.sims[s][1].true_floor[:, i].mean() for s in inputs.seeds]))
                out[("transfer", a)] = (
                    inputs.n_t,
                    [floor + expected_kl_gaussian_regression(b, d_x, inputs.rank) for b in inputs.n_t],
                )
    return out
