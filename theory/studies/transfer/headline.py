"""The first lines of a transfer report: what was run, how the checks came out, and the main finding.

A reader should know at once whether the run means anything: a grid with fewer than three seeds (or fewer than
three n_t levels) is said to be too small for its verdicts to be evidence, whatever they say.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from theory.verdicts.stats import MIN_SEEDS
from theory.verdicts.verdict import FAIL, PASS, CheckResult, Record, ok_records

__all__ = ["headline", "too_small"]

VERDICT_ORDER = (PASS, FAIL, "insufficient data", "insufficient seeds", "not tested")


def too_small(records: Sequence[Record]) -> str:
    """Why a run's verdicts cannot be evidence ("" when they can): too few seeds or n_t levels."""
    seeds = len({r["seed"] for r in ok_records(records)})
    levels = len({r["n_t"] for r in ok_records(records)})
    if seeds >= MIN_SEEDS and levels >= 3:
        return ""
    return (
        f"**Too small to mean anything**: {seeds} seed(s) and {levels} n_t level(s), where a verdict needs "
        f">= {MIN_SEEDS} seeds and an exponent >= 3 levels. This run shows that the pipeline runs end to end; "
        "its verdicts are not evidence either way."
    )


def _count_line(checks: Sequence[CheckResult]) -> str:
    counts = Counter(c.verdict for c in checks if c.verdict != "diagnostic")
    parts = [f"{counts[v]} {'FAIL' if v == FAIL else v}" for v in VERDICT_ORDER if counts[v]]
    return f"{sum(counts.values())} checks: " + ", ".join(parts)


def _mean(records: Sequence[Record], head: str, variant: str, n_t: int, n_s: int | None = None) -> float | None:
    kl = [
        float(r["kl"])
        for r in ok_records(records)
        if r["head"] == head and r["variant"] == variant and r["n_t"] == n_t and (n_s is None or r.get("n_s") == n_s)
    ]
    return float(np.mean(kl)) if kl else None


def _findings(records: Sequence[Record], checks: Sequence[CheckResult]) -> list[str]:
    """One line per head with transfer and no-transfer at the smallest n_t (largest n_s), and the known answers."""
    out = []
    for head in sorted({r["head"] for r in ok_records(records)}):
        n_ss = sorted({int(r["n_s"]) for r in ok_records(records) if r["head"] == head and r.get("n_s") is not None})
        n_ts = sorted({int(r["n_t"]) for r in ok_records(records) if r["head"] == head})
        if not n_ss or not n_ts:
            continue
        t = _mean(records, head, "transfer", n_ts[0], n_ss[-1])
        nt = _mean(records, head, "no_transfer", n_ts[0])
        if t is not None and nt is not None and t > 0:
            out.append(
                f"`{head}`: at n_t = {n_ts[0]}, transfer (n_s = {n_ss[-1]}) reaches KL {t:.3g} nats against "
                f"{nt:.3g} without transfer "
                + (f"({nt / t:.1f}x lower)." if nt >= t else "(transfer is HIGHER: no gain at this size).")
            )
    for c in checks:
        if c.name.endswith("equals its known answer") and "ratio" in c.numbers:
            out.append(f"{c.name} [{c.scope}]: measured / predicted = {c.numbers['ratio']:.3f} ({c.verdict}).")
    return out


def headline(records: Sequence[Record], checks: Sequence[CheckResult], setup: dict[str, Any]) -> list[str]:
    """The report's opening lines (Markdown): what was run, the verdict counts, the FAILs, the main finding."""
    ok = ok_records(records)
    lines = [
        "## Summary",
        "",
        f"- **Ran** {setup['task']}; heads {setup['heads']}; variants {setup['variants']}; n_s {setup['n_s']}, "
        f"n_t {setup['n_t']}, {len({r['seed'] for r in ok})} seeds: {len(ok)} finished cells, "
        f"{len(records) - len(ok)} failed.",
        f"- **Verdicts**: {_count_line(checks)}.",
    ]
    small = too_small(records)
    if small:
        lines.append(f"- {small}")
    failed = [f"{c.name} [{c.scope}]" for c in checks if c.verdict == FAIL]
    if failed:
        lines.append("- **FAIL**: " + "; ".join(failed) + ".")
    findings = _findings(records, checks)
    if findings:
        lines.append("- **Main finding**: " + " ".join(findings))
    return lines + [""]
