"""TGDP's premise, checked before anything is sampled: does the target reweight the source inside its support?

TGDP writes the target as q = w p and learns w from a domain classifier. That only works when the target lies
inside the source's support and the weights do not pile onto a few source rows. From the classifier's density
ratio evaluated at the source rows (w_s, (n_s,)) and at the target rows (w_t, (n_t,)):

- ``auc``: the ROC AUC of log w separating target rows (positives) from source rows (negatives); 0.5 = the
  domains overlap, 1 = disjoint. (In-sample: the classifier saw these rows, so it reads optimistic.)
- ``ess_fraction``: (sum w_s)^2 / (n_s sum w_s^2), the effective sample size of the weights over n_s;
- ``mean_weight``: E_p[w] estimated on the source rows; 1 when q << p and the ratio is calibrated.

:class:`PremiseThresholds` states the limits; :func:`check_premise` returns a :class:`PremiseReport` and emits a
:class:`~shared_embed.errors.PremiseWarning` naming every check that fails. ``fit_tgdp`` runs it on every fit that
trains its domain classifier (not when exact source weights are given: there are no target weights to read).

Example:
    >>> report = check_premise(w_source, w_target)
    >>> report.ok, report.failures
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from shared_embed.errors import ConfigError, DataError, PremiseWarning

__all__ = ["PremiseReport", "PremiseThresholds", "auc", "check_premise"]
from shared_embed.validation import check_tensor


@dataclass(frozen=True)
class PremiseThresholds:
    """The stated limits: AUC <= ``max_auc``, ESS / n_s >= ``min_ess_fraction``, E_p[w] >= ``min_mean_weight``
    and, when ``max_mean_weight`` is given, E_p[w] <= it. No upper limit by default: the guidance enters the score
    only through grad log h, which a constant factor on w leaves unchanged, and short classifier fits in the
    two-Gaussian demos, where TGDP works, read E_p[w] of 6 to 27 (w close to the prior factor n_s / n_t).

    The defaults catch gross failures only: the paper's two-Gaussian simulation, where TGDP works, reads
    AUC 0.965 and ESS / n_s 0.033 in-sample (tests/diffusion/tgdp/test_tgdp.py's fit), so stricter limits would flag it; the
    mirrored digits (out of the source's support, where TGDP collapsed) read AUC 1.000 and E_p[w] 0.000 and are
    flagged. These diagnostics cannot by themselves tell every hard reweighting inside the support from a target
    outside it."""

    max_auc: float = 0.99
    min_ess_fraction: float = 0.01
    min_mean_weight: float = 0.1
    max_mean_weight: float | None = None

    def __post_init__(self) -> None:
        if not 0.5 <= self.max_auc <= 1.0:
            raise ConfigError(f"max_auc must lie in [0.5, 1], got {self.max_auc}")
        if not 0.0 < self.min_ess_fraction <= 1.0:
            raise ConfigError(f"min_ess_fraction must lie in (0, 1], got {self.min_ess_fraction}")
        if not 0.0 <= self.min_mean_weight <= 1.0:
            raise ConfigError(f"min_mean_weight must lie in [0, 1], got {self.min_mean_weight}")
        if self.max_mean_weight is not None and not self.max_mean_weight >= 1.0:
            raise ConfigError(f"max_mean_weight must be >= 1 (or None: no upper limit), got {self.max_mean_weight}")


@dataclass(frozen=True)
class PremiseReport:
    """The diagnostics, the thresholds they were checked against and the failed checks (messages)."""

    auc: float
    ess_fraction: float
    mean_weight: float
    thresholds: PremiseThresholds = field(default_factory=PremiseThresholds)
    failures: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "failures": list(self.failures), "ok": self.ok}


def auc(negatives: Tensor, positives: Tensor) -> float:
    """ROC AUC of 1-D scores, ties counted 1/2: P(a positive scores above a negative); O(n log n)."""
    neg, pos = negatives.double().flatten().sort().values, positives.double().flatten()
    if neg.numel() == 0 or pos.numel() == 0:
        raise DataError("auc needs at least one score of each kind")
    below = torch.searchsorted(neg, pos, right=False).double()
    tied = torch.searchsorted(neg, pos, right=True).double() - below
    return float((below + 0.5 * tied).sum() / (pos.numel() * neg.numel()))


def check_premise(
    source_weights: Tensor, target_weights: Tensor, thresholds: PremiseThresholds | None = None, *, warn: bool = True
) -> PremiseReport:
    """The diagnostics of density ratios at the source rows (n_s,) and the target rows (n_t,), checked against
    ``thresholds``; with ``warn``, a :class:`PremiseWarning` naming every failed check."""
    th = thresholds or PremiseThresholds()
    w_s = check_tensor("source_weights", source_weights, ndim=1, min_rows=1).double()
    w_t = check_tensor("target_weights", target_weights, ndim=1, min_rows=1).double()
    if bool((w_s < 0).any()) or bool((w_t < 0).any()):
        raise DataError("source_weights and target_weights are density ratios and must be >= 0")
    value_auc = auc(torch.log(w_s.clamp_min(1e-300)), torch.log(w_t.clamp_min(1e-300)))
    ess = float(w_s.sum() ** 2 / (w_s.numel() * w_s.square().sum())) if float(w_s.sum()) > 0 else 0.0
    mean_w = float(w_s.mean())
    failures = []
    if value_auc > th.max_auc:
        failures.append(
            f"domain classifier AUC {value_auc:.3f} > {th.max_auc}: the target is (nearly) separable "
            "from the source, outside its support"
        )
    if ess < th.min_ess_fraction:
        failures.append(f"ESS / n_s {ess:.3f} < {th.min_ess_fraction}: the weights rest on a few source rows")
    if mean_w < th.min_mean_weight:
        failures.append(
            f"E_p[w] {mean_w:.3f} < {th.min_mean_weight}: the ratio puts almost no weight on the source, "
            "the target's mass lies outside it"
        )
    elif th.max_mean_weight is not None and mean_w > th.max_mean_weight:
        failures.append(
            f"E_p[w] {mean_w:.3f} > {th.max_mean_weight}: the ratio does not integrate to 1 over the source"
        )
    report = PremiseReport(value_auc, ess, mean_w, th, tuple(failures))
    if warn and failures:
        warnings.warn(
            "TGDP's premise fails (q = w p inside the source's support): "
            + "; ".join(failures)
            + ". Guided samples may collapse; compare with the target-only model.",
            PremiseWarning,
            stacklevel=2,
        )
    return report
