"""The theory's claims checked against sweep records: every check the records allow, with verdicts.

Each check states its hypothesis and statistic and returns two one-sided p-values (:mod:`theory.verdicts.verdict`);
:func:`run_checks` gathers a report's checks into one family and gives the verdicts with Holm's procedure,
so correct code gets a false FAIL anywhere in the report with probability at most ``1 - confidence``.
Intervals are Student t intervals over seeds (:mod:`theory.verdicts.stats`), with at least :data:`MIN_SEEDS` seeds.

The checks live by subject:

- :mod:`theory.verdicts.rate_checks`: who wins, how fast KL falls in n_t, the floor in n_s, the integrity of records;
- :mod:`theory.verdicts.known_answer_check`: the two-sided known answer of a linear-Gaussian head (value, not slope);
- :mod:`theory.verdicts.dimension_checks`: the dimension laws across tasks (run by the report for studies whose grid
  varies the task).

Example:
    >>> results = run_checks(records, rates)
    >>> print(format_checks(results))
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from theory.truth.rates import Rates
from theory.verdicts.bound_check import check_sde_bound, diagnose_ode_bound
from theory.verdicts.controls import NEGATIVE_CONTROLS
from theory.verdicts.integrity_checks import check_kl_is_divergence, check_replicates_independent, fixed_instance
from theory.verdicts.known_answer_check import (
    KNOWN_ANSWER_VARIANTS,
    PARAMETRIC_KINDS,
    applies,
    check_known_answer,
    check_known_exponent,
    check_transfer_known_answers,
    transfer_applies,
)
from theory.verdicts.rate_checks import (
    SlopeFit,
    check_catch_up,
    check_embedding_frozen,
    check_exponent,
    check_floor_falls,
    check_floor_is_floor,
    check_records_finite,
    check_transfer_beats_no_transfer,
    fit_exponent,
    floors,
)
from theory.verdicts.stats import MIN_SEEDS, mean_se
from theory.verdicts.verdict import (
    DIAGNOSTIC,
    FAIL,
    INSUFFICIENT,
    INSUFFICIENT_SEEDS,
    INTEGRITY,
    PASS,
    CheckResult,
    Record,
    decide,
    ok_records,
    series,
)

__all__ = [
    "DIAGNOSTIC",
    "FAIL",
    "INSUFFICIENT",
    "INSUFFICIENT_SEEDS",
    "MIN_SEEDS",
    "PASS",
    "CheckResult",
    "SlopeFit",
    "check_catch_up",
    "check_embedding_frozen",
    "check_exponent",
    "check_floor_falls",
    "check_floor_is_floor",
    "check_known_answer",
    "check_records_finite",
    "check_transfer_beats_no_transfer",
    "decide",
    "fit_exponent",
    "floors",
    "format_checks",
    "level_stats",
    "mean_se",
    "ok_records",
    "run_checks",
    "series",
]


def level_stats(level: dict[int, Record], key: str = "kl") -> tuple[float, float, int]:
    """(mean, SE, seeds) of ``key`` over the seeds of one n_t."""
    rs = list(level.values())
    mean, se = mean_se([r[key] for r in rs], [r.get(f"{key}_se", float("nan")) for r in rs])
    return mean, se, len(rs)


def _head_checks(
    rs: list[Record], head: str, rate: Rates | None, confidence: float, margin: float, task: str | None
) -> list[CheckResult]:
    """The single-task checks of one head (and one task label)."""
    mine = [r for r in rs if r["head"] == head and (task is None or r.get("task", "") == task)]
    variants = {r["variant"] for r in mine}
    n_ss = sorted({int(r["n_s"]) for r in mine if r.get("n_s") is not None})
    ci: dict[str, Any] = {"confidence": confidence, "task": task}
    label: dict[str, Any] = {"rate_label": rate.label if rate else ""}

    def power(variant: str) -> dict[str, Any]:
        return {"log_power": rate.log_power_for(variant) if rate else 0.0}

    out: list[CheckResult] = []
    # variants held to an exact law: their exponent is checked two-sided against it, not against a template
    exact = {r["variant"] for r in mine if applies(r) or transfer_applies(r)}
    if {"transfer", "no_transfer"} <= variants:
        out += [check_transfer_beats_no_transfer(mine, head, n, **ci) for n in n_ss]
    if "transfer" in variants and "transfer" not in exact:  # fine_tune has no prediction (report's table only)
        out += [
            check_exponent(
                mine, head, "transfer", rate.transfer if rate else None, n, **ci, **label, **power("transfer")
            )
            for n in n_ss
        ]
    for variant in ("no_transfer", "oracle", "direct"):
        if variant in variants and variant not in exact:
            out.append(
                check_exponent(
                    mine, head, variant, rate.for_variant(variant) if rate else None, **ci, **label, **power(variant)
                )
            )
    parametric = any(r.get("head_kind") in PARAMETRIC_KINDS for r in mine)
    for variant in KNOWN_ANSWER_VARIANTS:
        if variant in variants and parametric:
            out.append(check_known_answer(mine, head, variant, task=task, margin=margin))
            out.append(check_known_exponent(mine, head, variant, task=task))
    out += check_transfer_known_answers(mine, head, task=task, margin=margin)
    if "transfer" in variants:
        out.append(check_floor_falls(mine, head, rate.floor if rate else None, **ci))
        out += [check_floor_is_floor(mine, head, n, task=task) for n in n_ss]
        out.append(check_embedding_frozen(mine, head))
    if {"transfer", "no_transfer"} <= variants:
        out += [check_catch_up(mine, head, n, **ci) for n in n_ss]
    if any(r.get("head_kind") == "diffusion" for r in mine):  # its own Holm over cells; ODE: a diagnostic only
        out += [check_sde_bound(mine, head, alpha=1.0 - confidence), diagnose_ode_bound(mine, head)]
    if task:
        for c in out:
            c.scope = f"{c.scope} [{task}]" if task not in c.scope else c.scope
    return out


RatesFor = Callable[[str, str], "Rates | None"]


def run_checks(
    records: Sequence[Record],
    rates: dict[str, Rates] | RatesFor,
    *,
    confidence: float = 0.95,
    margin: float = 2.0,
    extra: Sequence[CheckResult] = (),
    per_task: bool = False,
) -> list[CheckResult]:
    """Every check the records allow, per head (per task label when ``per_task``), decided as one family.

    Args:
        rates: head name -> predicted :class:`Rates` (e.g. from :func:`theory.truth.rates.predicted_rates`), or a
            function (head, task label) -> Rates for studies whose tasks differ in dimension.
        confidence: 1 - the family-wise error rate of the verdicts (Holm).
        margin: the factor a known answer must be able to detect (its power is reported).
        extra: further checks (e.g. the dimension laws) decided in the same family.
    """
    rs = ok_records(records)
    out = (
        [check_records_finite(records), check_kl_is_divergence(records), check_replicates_independent(records)]
        if rs
        else []
    )
    tasks = sorted({r.get("task", "") for r in rs}) if per_task else [None]
    rate_of = rates if callable(rates) else (lambda head, _task: rates.get(head))
    for head in sorted({r["head"] for r in rs}):
        for task in tasks:
            out += _head_checks(rs, head, rate_of(head, task or ""), confidence, margin, task)
    out += list(extra)
    if fixed_instance(records):  # one task instance: one replicate, whatever the seed count
        for c in out:
            if c.tier != INTEGRITY and c.verdict not in (DIAGNOSTIC, INSUFFICIENT_SEEDS):
                c.verdict = INSUFFICIENT_SEEDS
                c.summary += " (withheld: the seeds share one task instance)"
    return decide(out, 1.0 - confidence)


def format_checks(results: Sequence[CheckResult]) -> str:
    """A Markdown table: check | scope | verdict | Holm p (fail / pass) | numbers."""
    lines = ["| check | scope | verdict | Holm p: fail / pass | numbers |", "|---|---|---|---|---|"]
    for c in results:
        verdict = {PASS: "**pass**", FAIL: "**FAIL**"}.get(c.verdict, c.verdict)
        pf, pp = c.numbers.get("p_fail_holm"), c.numbers.get("p_pass_holm")
        ps = "-" if pf is None else f"{_p(pf)} / {_p(pp) if c.p_pass is not None else 'gof'}"
        summary = c.summary.replace("|", "\\|")  # a literal | inside a Markdown table cell
        lines.append(f"| {c.name} | {c.scope} | {verdict} | {ps} | {summary} |")
    return "\n".join(lines)


def format_hypotheses(results: Sequence[CheckResult]) -> str:
    """A Markdown table of what each distinct check claims, computes, and which negative control FAILs it."""
    seen: dict[str, CheckResult] = {}
    for c in results:
        seen.setdefault(c.name, c)
    lines = ["| check | hypothesis (the claim) | statistic | negative control that must FAIL it |", "|---|---|---|---|"]
    lines += [
        f"| {c.name} | {c.hypothesis} | {c.statistic} | {NEGATIVE_CONTROLS.get(c.name, '-')} |" for c in seen.values()
    ]
    return "\n".join(lines)


def _p(p: float | None) -> str:
    if p is None or not math.isfinite(p):
        return "-"
    return f"{p:.2g}" if p >= 1e-3 else "<0.001"
