"""Network-free TGDP guidance in one call each: the fits a user runs on a frozen source score and two samples.

- :func:`fit_kernel_guidance`: a cross-validated quadratic log-ratio classifier w_hat(x[, y]) on the two samples,
  then h_t(x_t) = E_{p_hat}[w_hat | x_t] over the source rows, KDE-smoothed in closed form
  (:class:`~diffusion.tgdp.kernel_guidance.KernelGuidance`): no network, no training loop, suited to tiny n_t.
- :func:`fit_classifier_guidance`: a time-dependent domain classifier c(x_t, t[, y]) trained by BCE on noised
  rows, whose log-odds (plus log n_s / n_t) is log h_t itself
  (:class:`~diffusion.tgdp.noisy_guidance.ClassifierGuidance`).

Both return a :class:`GuidanceFit`: the composed target score s_src + grad log h_t (a ``ScoreFn`` for
``sample_ode`` / ``probability_flow_log_prob``), the guidance and what was fitted.

Example:
    >>> fit = fit_kernel_guidance(source_head.score, source_x, target_x, VPSchedule(), seed=0)
    >>> x0 = sample_ode(fit.score, torch.randn(500, source_x.shape[1]), VPSchedule())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from diffusion.sampling import ScoreFn
from diffusion.schedule import VPSchedule
from shared_embed.train import TrainConfig

from .classifier import fit_domain_classifier
from .compose import GuidedScore
from .guidance import Guidance
from .kernel_guidance import KernelGuidance
from .noisy_guidance import ClassifierGuidance
from .quadratic_ratio import QuadraticLogRatio, fit_quadratic_log_ratio

__all__ = ["GuidanceFit", "fit_classifier_guidance", "fit_kernel_guidance"]

#: the noisy classifier's optimiser unless the caller's ``train`` says otherwise
CLASSIFIER_TRAIN: dict[str, Any] = {"lr": 1e-3, "optimizer": "adamw", "weight_decay": 1e-4}


@dataclass
class GuidanceFit:
    """A fitted guidance: ``score`` = s_src + grad log h_t, the ``guidance`` h_t, the density ratio it came from
    (``ratio``: the quadratic classifier, or None), optimiser ``steps`` and the chosen settings (``info``)."""

    score: ScoreFn
    guidance: Guidance
    ratio: QuadraticLogRatio | None = None
    steps: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def fit_kernel_guidance(
    source_score: ScoreFn,
    source_x: Tensor,
    target_x: Tensor,
    schedule: VPSchedule,
    *,
    source_context: Tensor | None = None,
    target_context: Tensor | None = None,
    bandwidth: float | str = "scott",
    max_rows: int | None = None,
    seed: int = 0,
) -> GuidanceFit:
    """Kernel guidance from a quadratic log-ratio classifier (module docstring).

    Args:
        source_score: the frozen source score ``score(x_t (n, d), t (n,), context)``.
        source_x / target_x: the samples (n_s, d) and (n_t, d); with ``source_context`` / ``target_context``
            ((n_s, k) and (n_t, k), both or neither) the ratio and the guidance condition on them.
        bandwidth: the KDE bandwidth of the source rows (a number, or ``"scott"``); ``max_rows``: a seeded subset
            of the source rows kept by the guidance (None: all).

    Raises:
        ShapeError, DataError, ConfigError: inputs of the wrong shape, not finite, too few rows, or a bad option.
    """
    ratio = fit_quadratic_log_ratio(
        source_x, target_x, source_context=source_context, target_context=target_context, seed=seed
    )
    guidance = KernelGuidance(
        source_x,
        ratio,
        schedule,
        bandwidth=bandwidth,
        source_context=source_context,
        dtype=torch.float32,
        max_rows=max_rows,
        seed=seed,
    )
    info = {"C": ratio.strength, "bandwidth": guidance.bandwidth, "rows": int(guidance.x.shape[0])}
    return GuidanceFit(GuidedScore(source_score, guidance), guidance, ratio, info=info)


def fit_classifier_guidance(
    source_score: ScoreFn,
    source_x: Tensor,
    target_x: Tensor,
    schedule: VPSchedule,
    *,
    source_context: Tensor | None = None,
    target_context: Tensor | None = None,
    train: dict[str, Any] | None = None,
    seed: int = 0,
    **classifier: Any,
) -> GuidanceFit:
    """Guidance from a time-dependent domain classifier's log-odds (module docstring).

    ``train``: :class:`~shared_embed.train.TrainConfig` fields of its BCE fit (default :data:`CLASSIFIER_TRAIN`,
    seeded by ``seed``); ``classifier``: options of
    :func:`~diffusion.tgdp.classifier.fit_domain_classifier` (e.g. ``hidden=(64, 64)``).
    """
    config = TrainConfig(**{**CLASSIFIER_TRAIN, **(train or {}), "seed": seed, "description": "noisy classifier"})
    time_ratio, history = fit_domain_classifier(
        source_x,
        target_x,
        time_dependent=True,
        schedule=schedule,
        config=config,
        source_context=source_context,
        target_context=target_context,
        **classifier,
    )
    guidance = ClassifierGuidance(time_ratio)
    info = {"prior_factor": time_ratio.prior_factor}
    return GuidanceFit(GuidedScore(source_score, guidance), guidance, steps=history.steps_done, info=info)
