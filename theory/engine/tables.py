"""Means over seeds, their standard errors, and how every table of gentransfer prints them: ``mean ± SE``.

A seed is one independent replicate of a cell (its own task instance, data and fits), so the SE of a mean
over seeds is the sample standard deviation over sqrt(seeds). With one seed there is no spread to read; a table
then shows the Monte Carlo SE of that one estimate (pooled: sqrt(sum se_i^2) / n), which covers only the
evaluation noise and says so in its caption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from theory.verdicts.stats import mean_se

Record = dict[str, Any]


def plus_minus(mean: float, se: float, digits: int = 4) -> str:
    """``"0.1234 ± 0.0056"``; the mean alone when the SE is not finite; ``"nan"`` for a non-finite mean."""
    if not math.isfinite(mean):
        return "nan"
    text = f"{mean:.3g}" if abs(mean) >= 1e5 else f"{mean:.{digits}f}"
    if not math.isfinite(se):
        return text
    return f"{text} ± {se:.3g}" if abs(se) >= 1e5 else f"{text} ± {se:.{digits}f}"


def summarize_seeds(
    records: Sequence[Record], by: str, order: Sequence[str] = (), extra: Sequence[str] = ("floor", "head_term")
) -> list[Record]:
    """One row per (``record[by]``, n_t): the mean KL over seeds with its SE across seeds (``kl_se_seeds``,
    nan for one seed) and the pooled Monte Carlo SE (``kl_se_mc``); each key of ``extra`` that every record of
    the row holds gets ``{key}_mean`` and ``{key}_se_seeds`` (the pooled ``{key}_se`` for one seed).

    Rows come in the order of ``order`` (names not in it last), then by n_t.
    """
    groups: dict[tuple[str, int], list[Record]] = {}
    for r in records:
        groups.setdefault((r[by], int(r["n_t"])), []).append(r)
    rank = {name: i for i, name in enumerate(order)}
    rows = []
    for (name, n_t), rs in sorted(groups.items(), key=lambda kv: (rank.get(kv[0][0], len(rank)), kv[0][1])):
        kls = [float(r["kl"]) for r in rs]
        mean, se = mean_se(kls)
        row = {
            by: name,
            "n_t": n_t,
            "seeds": len(rs),
            "kl_mean": mean,
            "kl_se_seeds": se,  # nan for one seed
            "kl_se_mc": math.sqrt(sum(r["kl_se"] ** 2 for r in rs)) / len(rs),
        }
        for key in extra:
            if all(key in r for r in rs):
                row[f"{key}_mean"], row[f"{key}_se_seeds"] = mean_se(
                    [float(r[key]) for r in rs], [float(r.get(f"{key}_se", math.nan)) for r in rs]
                )
        rows.append(row)
    return rows


def row_se(row: Record) -> float:
    """The SE a table prints for a row of :func:`summarize_seeds`: across seeds, or the MC SE for one seed."""
    return row["kl_se_seeds"] if row["seeds"] > 1 else row["kl_se_mc"]
