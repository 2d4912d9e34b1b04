"""Integrity rules every report checks first: a KL is a divergence, and seeds are independent replicates.

These are rules, not tests with a sampling law of their own, and they gate the rest (:func:`decide`): a record
set that breaks one gives no statistical verdict at all.

- :func:`check_kl_is_divergence`: every KL field (the KL, the floor model's KL and its paired value) is at least
  -3 of its Monte Carlo SEs. A KL below that is an estimator or a truth that is wrong, never a lucky draw.
- :func:`check_replicates_independent`: the seeds of a report are independent replicates: each has its own task
  instance (a ``fixed`` instance is ONE replicate of the task, and withholds every verdict that needs several),
  and no two seeds share a record value, a training sample or an evaluation sample at the same coordinates.
  Identical replicates give intervals of zero width, whose "certainty" is no evidence.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

from theory.verdicts.verdict import INSUFFICIENT_SEEDS, INTEGRITY, CheckResult, Record, ok_records

__all__ = [
    "DIVERGENCE_FIELDS",
    "DIVERGENCE_SES",
    "check_kl_is_divergence",
    "check_replicates_independent",
    "fixed_instance",
]

#: Record fields that estimate a KL divergence, with the field of each one's Monte Carlo SE. The head term
#: (a difference of two KLs) is not one: "floor is a floor" checks its sign.
DIVERGENCE_FIELDS = {"kl": "kl_se", "floor": "floor_se", "floor_paired": "floor_paired_se"}
#: How many of its own SEs a divergence may fall below zero before it FAILs.
DIVERGENCE_SES = 3.0
#: Record fields compared across seeds at the same coordinates (equal values: not independent replicates).
REPLICATE_FIELDS = ("kl", "target_digest", "eval_digest")


def _where(r: Record) -> str:
    n_s = f" n_s={r['n_s']}" if r.get("n_s") is not None else ""
    task = f"[{r['task']}] " if r.get("task") else ""
    return f"{task}{r['head']} {r['variant']}{n_s} n_t={r['n_t']} seed={r['seed']}"


def check_kl_is_divergence(records: Sequence[Record]) -> CheckResult:
    """Every KL field >= -3 SE; the most negative one is named."""
    name, scope = "KL is a divergence (>= -3 SE)", "all"
    hyp = "a KL divergence is never negative, so an estimate may fall below zero only by its Monte Carlo error"
    stat = f"per record and KL field, value / SE; FAIL when any is below -{DIVERGENCE_SES:g}"
    worst: tuple[float, str] | None = None
    bad = 0
    rs = ok_records(records)
    for r in rs:
        for key, se_key in DIVERGENCE_FIELDS.items():
            if r.get(key) is None or not math.isfinite(float(r[key])):
                continue
            value, se = float(r[key]), float(r.get(se_key) or 0.0)
            z = value / se if se > 0 else (math.inf if value >= 0 else -math.inf)
            if z < -DIVERGENCE_SES:
                bad += 1
            if worst is None or z < worst[0]:
                worst = (z, f"{key} = {value:.4g} ± {se:.2g} ({_where(r)})")
    summary = f"{bad} KL field(s) below -{DIVERGENCE_SES:g} SE in {len(rs)} records" + (
        f"; lowest: {worst[1]}, {worst[0]:.1f} SE" if worst else ""
    )
    return CheckResult(
        name,
        scope,
        "",
        summary,
        {"below": bad},
        hyp,
        stat,
        p_pass=0.0 if not bad else 1.0,
        p_fail=0.0 if bad else 1.0,
        tier=INTEGRITY,
    )


def _task_seeds(records: Sequence[Record]) -> dict[str, dict[int, set[object]]]:
    """Task label -> grid seed -> the task seeds its records name (records that name none are not judged)."""
    by_label: dict[str, dict[int, set[object]]] = defaultdict(lambda: defaultdict(set))
    for r in ok_records(records):
        if r.get("task_seed") is not None:
            by_label[r.get("task", "")][int(r["seed"])].add(r["task_seed"])
    return by_label


def fixed_instance(records: Sequence[Record]) -> bool:
    """True when several seeds of one task label share ONE task instance (``task.instance = "fixed"``)."""
    return any(len(seeds) > 1 and len(set().union(*seeds.values())) == 1 for seeds in _task_seeds(records).values())


def _repeated_task_seeds(records: Sequence[Record]) -> list[str]:
    """Task labels whose grid seeds map onto fewer task instances than seeds (but more than one)."""
    found = []
    for label, seeds in _task_seeds(records).items():
        instances = set().union(*seeds.values())
        if 1 < len(instances) < len(seeds):
            found.append(
                f"{label or 'task'}: seeds {sorted(seeds)} -> task seeds "
                f"{[sorted(seeds[s], key=str) for s in sorted(seeds)]}"
            )
    return found


def _shared_values(records: Sequence[Record]) -> list[str]:
    """Coordinates at which two seeds carry the same value of a replicate field."""
    groups: dict[tuple[object, ...], list[Record]] = defaultdict(list)
    for r in ok_records(records):
        groups[(r.get("task", ""), r["head"], r["variant"], r.get("n_s"), r["n_t"])].append(r)
    found = []
    for rs in groups.values():
        for key in REPLICATE_FIELDS:
            seen: dict[object, int] = {}
            for r in rs:
                value = r.get(key)
                if value is None:
                    continue
                if value in seen and seen[value] != r["seed"]:
                    found.append(f"{key} of {_where(r)} equals seed {seen[value]}'s")
                seen.setdefault(value, r["seed"])
    return found


def check_replicates_independent(records: Sequence[Record]) -> CheckResult:
    """Seeds are independent replicates: own task instances, no shared values, samples or evaluation draws."""
    name, scope = "replicates are independent", "all"
    hyp = (
        "every seed is an independent replicate of the whole experiment (its own task instance, data and "
        "evaluation sample), as the t intervals over seeds assume"
    )
    stat = (
        "task seeds per grid seed; records, training-sample and evaluation-sample digests compared across seeds "
        "at equal coordinates"
    )
    seeds = sorted({int(r["seed"]) for r in ok_records(records)})
    if fixed_instance(records):
        return CheckResult(
            name,
            scope,
            INSUFFICIENT_SEEDS,
            f"{len(seeds)} seeds share one task instance "
            "(task.instance = 'fixed'): one replicate of the task, so every verdict that needs "
            "replicates is withheld",
            hypothesis=hyp,
            statistic=stat,
            tier=INTEGRITY,
        )
    problems = _repeated_task_seeds(records) + _shared_values(records)
    summary = (
        (f"{len(problems)} shared value(s) across {len(seeds)} seeds: " + "; ".join(problems[:3]))
        if problems
        else f"{len(seeds)} seeds, each its own task instance, records and samples"
    )
    return CheckResult(
        name,
        scope,
        "",
        summary,
        {"problems": len(problems), "seeds": len(seeds)},
        hyp,
        stat,
        p_pass=0.0 if not problems else 1.0,
        p_fail=0.0 if problems else 1.0,
        tier=INTEGRITY,
    )
