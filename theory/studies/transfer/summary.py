"""Summaries of a transfer study's records: means over seeds, Markdown tables, the sample-efficiency ratio.

:func:`summarize` averages over seeds per (variant, n_t), :func:`format_table` prints KL ± SE per variant and
n_t, :func:`format_split_table` the KL split of transfer (embedding floor + head term), and
:func:`sample_efficiency_ratio` reads off the n_t that ``no_transfer`` needs to match ``transfer`` at a
reference n_t. Records are those of the transfer sweep (:mod:`theory.studies.transfer.sweep`).

Example:
    >>> result = run_flow_experiment(preset="quick")        # theory.studies.transfer.experiments
    >>> print(format_table(result["records"]))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from shared_embed.errors import DataError
from shared_embed.transfer import VARIANTS
from theory.engine.tables import plus_minus, row_se, summarize_seeds


def summarize(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean KL over seeds per (variant, n_t), with the SE across seeds and the pooled Monte Carlo SE
    (:func:`theory.engine.tables.summarize_seeds` with the KL split's floor and head term)."""
    return summarize_seeds(records, "variant", VARIANTS)


def format_split_table(records: Sequence[dict[str, Any]], variant: str = "transfer") -> str:
    """A Markdown table of the KL split of ``variant`` per n_t: total = floor + head term (mean ± SE)."""
    rows = [r for r in summarize(records) if r["variant"] == variant and "floor_mean" in r]
    if not rows:
        return ""
    lines = ["| n_t | KL total | embedding floor | head term |", "|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['n_t']} | {plus_minus(r['kl_mean'], row_se(r))} | "
            f"{plus_minus(r['floor_mean'], r['floor_se_seeds'])} | "
            f"{plus_minus(r['head_term_mean'], r['head_term_se_seeds'])} |"
        )
    return "\n".join(lines)


def format_table(records: Sequence[dict[str, Any]]) -> str:
    """A Markdown table: one row per n_t, one column per variant, 'mean ± SE across seeds' in nats."""
    rows = summarize(records)
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    n_ts = sorted({r["n_t"] for r in rows})
    cell = {(r["variant"], r["n_t"]): r for r in rows}
    lines = ["| n_t | " + " | ".join(variants) + " |", "|---:|" + "---:|" * len(variants)]
    for n_t in n_ts:
        parts = []
        for v in variants:
            r = cell.get((v, n_t))
            if r is None:
                parts.append("-")
            else:
                parts.append(plus_minus(r["kl_mean"], row_se(r)))
        lines.append(f"| {n_t} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def sample_efficiency_ratio(
    records: Sequence[dict[str, Any]],
    reference_n_t: int = 100,
    reference: str = "transfer",
    baseline: str = "no_transfer",
    floor: float = 1e-6,
) -> dict[str, Any]:
    """The n_t that ``baseline`` needs to match ``reference`` at ``reference_n_t``, over reference_n_t.

    Mean KLs over seeds; the first crossing of the baseline curve below the reference KL is located by
    linear interpolation in (log n_t, log KL) (KLs clipped below at ``floor``). When the baseline never
    gets there within the grid the answer is a lower bound '> max(n_t)/reference_n_t'; when it is already
    below at the smallest n_t, an upper bound '<= min(n_t)/reference_n_t'.

    Returns:
        dict with target_kl, n_t_needed (None for a lower bound), ratio (None likewise), bound
        ('=', '>' or '<=') and text, e.g. '4.2' or '> 10'.
    """
    mean = {(r["variant"], r["n_t"]): r["kl_mean"] for r in summarize(records)}
    if (reference, reference_n_t) not in mean:
        raise DataError(f"no {reference!r} records at n_t={reference_n_t}")
    curve = sorted((n, kl) for (v, n), kl in mean.items() if v == baseline)
    if not curve:
        raise DataError(f"no {baseline!r} records")
    target = mean[(reference, reference_n_t)]
    out: dict[str, Any] = {
        "reference": reference,
        "baseline": baseline,
        "reference_n_t": reference_n_t,
        "target_kl": target,
        "baseline_curve": [list(p) for p in curve],
    }
    if curve[0][1] <= target:
        n_t = curve[0][0]
        return {**out, "n_t_needed": None, "ratio": None, "bound": "<=", "text": f"<= {n_t / reference_n_t:.3g}"}
    log_t = math.log(max(target, floor))
    for (n0, k0), (n1, k1) in zip(curve[:-1], curve[1:]):
        if k1 <= target:
            l0, l1 = math.log(max(k0, floor)), math.log(max(k1, floor))
            frac = (l0 - log_t) / (l0 - l1) if l0 != l1 else 1.0
            n_needed = math.exp(math.log(n0) + frac * (math.log(n1) - math.log(n0)))
            ratio = n_needed / reference_n_t
            return {**out, "n_t_needed": n_needed, "ratio": ratio, "bound": "=", "text": f"{ratio:.3g}"}
    return {**out, "n_t_needed": None, "ratio": None, "bound": ">", "text": f"> {curve[-1][0] / reference_n_t:.3g}"}


def grid_result(records: Sequence[dict[str, Any]], seconds: float, reference_n_t: int = 100) -> dict[str, Any]:
    """What an experiment returns: its records, the per-(variant, n_t) summary, the Markdown tables (KL per
    variant, transfer KL split), the sample-efficiency ratio at ``reference_n_t`` (None when that n_t was not
    run) and the wall time."""
    ran_reference = any(int(r["n_t"]) == reference_n_t for r in records)
    return {
        "records": list(records),
        "summary": summarize(records),
        "table": format_table(records),
        "split_table": format_split_table(records),
        "ratio": sample_efficiency_ratio(records, reference_n_t) if ran_reference else None,
        "seconds": seconds,
    }
