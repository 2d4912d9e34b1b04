"""What every check returns, how records are read, and how a report's checks get their verdicts.

A check states a **hypothesis** (the claim of the theory it tests), a **statistic** (what it computes from the
records) and two one-sided p-values from that statistic:

- ``p_fail``: small when the records contradict the claim (H0: the claim holds);
- ``p_pass``: small when the records support the claim beyond sampling error (H0: the claim fails), or
  ``None`` for goodness-of-fit checks (a known answer), whose pass is "inside the band, with enough power".

:func:`decide` gives the verdicts of a whole report at once, in three tiers that gate each other:

1. **integrity** (rules, no sampling error to speak of: records finite, KL a divergence, replicates independent,
   the encoder frozen): FAIL when the rule is broken. Any integrity FAIL leaves the tiers below "not tested".
2. **primary** (the sharp known answers, and transfer beating no-transfer): Holm's procedure at
   ``primary_share * alpha``; a check with a simulated null law (:class:`~theory.verdicts.simulated_law.Band`)
   is decided by its band at the level Holm gave it, so the verdict never contradicts the band printed beside it.
   Any primary FAIL leaves the secondary tier "not tested".
3. **secondary** (shapes, signs and exponents): Holm's procedure at ``(1 - primary_share) * alpha``.

A statistical tier that is alone (the other has no check to decide) keeps the whole ``alpha``.

By Bonferroni over the two statistical tiers, correct code gets a false FAIL (and, separately, a false pass) with
probability at most alpha, plus the rules' own rate (measured in ``docs/checks.md``); the sharp checks share only
their own tier's small family instead of every check's. A check with fewer than :data:`MIN_SEEDS` independent
replicates says ``insufficient seeds`` and is left out; ``diagnostic`` rows carry numbers but no verdict.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from theory.verdicts.simulated_law import POWER, Band
from theory.verdicts.stats import MIN_SEEDS, holm, holm_levels

PASS, FAIL, INSUFFICIENT = "pass", "fail", "insufficient data"
INSUFFICIENT_SEEDS, DIAGNOSTIC, NOT_TESTED = "insufficient seeds", "diagnostic", "not tested"
INTEGRITY, PRIMARY, SECONDARY = "integrity", "primary", "secondary"
TIERS = (INTEGRITY, PRIMARY, SECONDARY)
#: The share of the error rate the primary tier gets (the secondary tier gets the rest).
PRIMARY_SHARE = 0.8
Record = dict[str, Any]
#: Record fields that carry a KL in nats (what a distortion of the records scales).
KL_FIELDS = ("kl", "floor", "floor_paired", "head_term")

__all__ = [
    "DIAGNOSTIC",
    "FAIL",
    "INSUFFICIENT",
    "INSUFFICIENT_SEEDS",
    "INTEGRITY",
    "KL_FIELDS",
    "MIN_SEEDS",
    "NOT_TESTED",
    "PASS",
    "PRIMARY",
    "PRIMARY_SHARE",
    "SECONDARY",
    "CheckResult",
    "Record",
    "decide",
    "fmt",
    "level_values",
    "ok_records",
    "series",
]


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
    #: integrity, primary or secondary: which tier of :func:`decide` the check belongs to.
    tier: str = SECONDARY
    #: The simulated null law of a known-answer check; its band at the check's level decides it, and a
    #: ``{band}`` in ``summary`` is replaced by that band.
    band: Band | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "band"}

    def provisional(self, alpha: float) -> CheckResult:
        """Set the verdict of this check alone at level ``alpha`` (what :func:`decide` does for a family)."""
        return decide([self], alpha)[0]


def _finite(p: float | None) -> float:
    return p if p is not None and math.isfinite(p) else math.nan


def _decidable(r: CheckResult) -> bool:
    return r.verdict not in (INSUFFICIENT_SEEDS, DIAGNOSTIC) and (r.p_fail is not None or r.p_pass is not None)


def _holm_tier(family: list[CheckResult], alpha: float) -> None:
    """Holm's procedure on p_fail and on p_pass within one tier (verdicts set in place)."""
    adj_fail = holm([_finite(r.p_fail) for r in family])
    adj_pass = holm([_finite(r.p_pass) for r in family])
    levels = holm_levels([_finite(r.p_fail) for r in family], alpha)
    for r, pf, pp, level in zip(family, adj_fail, adj_pass, levels):
        r.numbers.update(p_fail_holm=pf, p_pass_holm=pp, level=level, tier_alpha=alpha)
        if r.band is not None:
            _decide_by_band(r, level if math.isfinite(level) else alpha)
        elif math.isfinite(pf) and pf <= alpha:
            r.verdict = FAIL
        elif r.p_pass is None:  # goodness of fit: not rejected, and able to see the deviation it guards against
            r.verdict = PASS if r.powered and r.p_fail is not None and math.isfinite(r.p_fail) else INSUFFICIENT
        else:
            r.verdict = PASS if math.isfinite(pp) and pp <= alpha else INSUFFICIENT


def _decide_by_band(r: CheckResult, level: float) -> None:
    """FAIL iff the statistic is outside its band at ``level``; PASS iff inside and powered there."""
    assert r.band is not None
    lo, hi = r.band.at(level)
    power = r.band.power(level)
    r.powered = bool(power) and min(power.values()) >= POWER
    r.numbers.update(band=[lo, hi], power=power)
    r.summary = r.summary.replace(
        "{band}",
        f"band ({lo:.3g}, {hi:.3g}] at level {level:.2g}; power "
        + " / ".join(f"{v:.2f} vs {k}" for k, v in power.items()),
    )
    r.verdict = FAIL if r.band.outside(level) else PASS if r.powered else INSUFFICIENT


def _rule(r: CheckResult) -> None:
    """An integrity rule: FAIL when broken (p_fail 0), pass when it holds on records (p_pass 0)."""
    r.verdict = FAIL if r.p_fail == 0.0 else PASS if r.p_pass == 0.0 else INSUFFICIENT


def _not_tested(family: list[CheckResult], because: list[CheckResult]) -> None:
    names = "; ".join(sorted({r.name for r in because}))
    for r in family:
        r.verdict = NOT_TESTED
        r.summary = r.summary.replace("{band}", "band not drawn") + f" (not tested: {names} FAILed)"


def decide(
    results: Sequence[CheckResult], alpha: float = 0.05, primary_share: float = PRIMARY_SHARE
) -> list[CheckResult]:
    """Verdicts of a report's checks: integrity rules, then the primary and secondary tiers with Holm's
    procedure at ``primary_share * alpha`` and the rest, each tier tested only where the tiers above hold
    (in place; returned). See the module docstring for the guarantee."""
    tiers = {t: [r for r in results if r.tier == t and _decidable(r)] for t in TIERS}
    for r in tiers[INTEGRITY]:
        _rule(r)
    failed = [r for r in tiers[INTEGRITY] if r.verdict == FAIL]
    both = bool(tiers[PRIMARY]) and bool(tiers[SECONDARY])  # a tier alone keeps the whole error rate
    for tier, share in ((PRIMARY, primary_share if both else 1.0), (SECONDARY, 1.0 - primary_share if both else 1.0)):
        if failed:
            _not_tested(tiers[tier], failed)
            continue
        _holm_tier(tiers[tier], share * alpha)
        failed = [r for r in tiers[tier] if r.verdict == FAIL]
    return list(results)


# -- reading records -------------------------------------------------------------------------------------
def ok_records(records: Sequence[Record]) -> list[Record]:
    """Records of cells that finished (failed cells carry no KL)."""
    return [r for r in records if r.get("status", "ok") == "ok" and r.get("kl") is not None]


def series(
    records: Sequence[Record], head: str, variant: str, n_s: int | None = None, key: str = "kl", task: str | None = None
) -> dict[int, dict[int, Record]]:
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
