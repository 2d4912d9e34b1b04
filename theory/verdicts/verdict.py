"""What every check returns, how records are read, and how a family of checks gets its verdicts (Holm).

A check states a **hypothesis** (the claim of the theory it tests), a **statistic** (what it computes from the
records) and two one-sided p-values from that statistic:

- ``p_fail``: small when the records contradict the claim (H0: the claim holds);
- ``p_pass``: small when the records support the claim beyond sampling error (H0: the claim fails), or
  ``None`` for goodness-of-fit checks (a known answer), whose pass is "not rejected, with enough power".

:func:`decide` gives the verdicts of a whole report at once: Holm's procedure over the ``p_fail`` of every
check (so the chance that correct code gets ANY false FAIL is at most alpha), and separately over ``p_pass``.
A check that is neither is ``insufficient data``; one with fewer than :data:`MIN_SEEDS` seeds says
``insufficient seeds`` and is left out of the family. ``diagnostic`` rows carry numbers but no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from theory.verdicts.stats import MIN_SEEDS, holm

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient data"
INSUFFICIENT_SEEDS, DIAGNOSTIC = "insufficient seeds", "diagnostic"
Record = dict[str, Any]
#: Record fields that carry a KL in nats (what a distortion of the records scales).
KL_FIELDS = ("kl", "floor", "floor_paired", "head_term")

__all__ = ["DIAGNOSTIC", "FAIL", "INSUFFICIENT", "INSUFFICIENT_SEEDS", "KL_FIELDS", "MIN_SEEDS", "PASS",
           "CheckResult", "Record", "decide", "fmt", "level_values", "ok_records", "series"]


@dataclass
class CheckResult:
    """One check: what it claims (hypothesis), what it computes (statistic), its p-values and verdict."""

    name: str
    scope: str
    verdict: str
    summary: str
    numbers: dict[str, Any] = field(default_factory=dict)
    hypothesis: str = ""
    statistic: str = ""
    p_pass: float | None = None
    p_fail: float | None = None
    #: For goodness-of-fit checks (p_pass None): whether the test had the stated power to see a deviation.
    powered: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def provisional(self, alpha: float) -> CheckResult:
        """Set the verdict of this check alone at level ``alpha`` (what :func:`decide` does for a family)."""
        return decide([self], alpha)[0]


def _finite(p: float | None) -> float:
    return p if p is not None and math.isfinite(p) else math.nan


def decide(results: Sequence[CheckResult], alpha: float = 0.05) -> list[CheckResult]:
    """Verdicts of a family of checks with Holm's procedure on p_fail and on p_pass (in place; returned)."""
    family = [r for r in results if r.verdict not in (INSUFFICIENT_SEEDS, DIAGNOSTIC) and
              (r.p_fail is not None or r.p_pass is not None)]
    adj_fail = holm([_finite(r.p_fail) for r in family])
    adj_pass = holm([_finite(r.p_pass) for r in family])
    for r, pf, pp in zip(family, adj_fail, adj_pass):
        r.numbers["p_fail_holm"], r.numbers["p_pass_holm"] = pf, pp
        if math.isfinite(pf) and pf <= alpha:
            r.verdict = FAIL
        elif r.p_pass is None:  # goodness of fit: not rejected, and able to see the deviation it guards against
            r.verdict = PASS if r.powered and r.p_fail is not None and math.isfinite(r.p_fail) else INSUFFICIENT
        else:
            r.verdict = PASS if math.isfinite(pp) and pp <= alpha else INSUFFICIENT
    return list(results)


# -- reading records -------------------------------------------------------------------------------------
def ok_records(records: Sequence[Record]) -> list[Record]:
    """Records of cells that finished (failed cells carry no KL)."""
    return [r for r in records if r.get("status", "ok") == "ok" and r.get("kl") is not None]


def series(records: Sequence[Record], head: str, variant: str, n_s: int | None = None,
           key: str = "kl", task: str | None = None) -> dict[int, dict[int, Record]]:
    """{n_t: {seed: record}} for one head and variant (and task label); ``n_s`` filters source variants."""
    out: dict[int, dict[int, Record]] = {}
    for r in ok_records(records):
        if r["head"] != head or r["variant"] != variant or r.get(key) is None or not math.isfinite(float(r[key])):
            continue  # a non-finite value is flagged by the 'records are finite' check, never averaged
        if task is not None and r.get("task", "") != task:
            continue
        if r.get("n_s") is not None and n_s is not None and r["n_s"] != n_s:
            continue
        out.setdefault(int(r["n_t"]), {})[int(r["seed"])] = r
    return dict(sorted(out.items()))


def level_values(data: dict[int, dict[int, Record]], key: str = "kl") -> dict[int, dict[int, float]]:
    """{n: {seed: record[key]}} from :func:`series`."""
    return {n: {s: float(r[key]) for s, r in lv.items()} for n, lv in data.items()}


def fmt(x: float | None, digits: int = 4) -> str:
    return "nan" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"
