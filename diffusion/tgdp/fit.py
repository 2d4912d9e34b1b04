"""Fit TGDP end to end with the one training loop: classifier -> ratios -> [cycle classifier] -> guidance.

1. c(x[, y]) by BCE on source vs target (``fit_domain_classifier``); w(x_0) = ((1 - c) / c) * prior_factor at
   every source sample, computed once.
2. With ``eta_cycle > 0``: the time-dependent classifier c'(x_t, t[, y]) on noised source vs noised target.
3. h_psi by ``shared_embed.train.fit`` on the loss (L_guide's target Rao-Blackwellised by default)
   L_guide(source batch) + eta_cycle * L_cycle(target batch) + eta_consistency * L_cons(target batch);
   the loop batches the source rows and the loss draws the target batch (all n_t rows when n_t <= target_batch).
4. The target model is ``GuidedScore(source_score, h_psi)``, a plain ScoreFn.

Conditional TGDP passes the labels as contexts (source_context, target_context (n, 1)): the classifier, the
guidance and the source score then all read y, and grad_x log h_t(x, y) turns grad_x log p_t(x | y) into
grad_x log q_t(x | y). The label marginal q(y) comes from :class:`~diffusion.tgdp.labels.LabelMarginal`.

Example:
    >>> tgdp = fit_tgdp(source_head.score, source_x (n_s, d), target_x (n_t, d), config=TGDPConfig())
    >>> x0 = sample_ode(tgdp.score, torch.randn(1000, d), VPSchedule())   # draws from the target model

Reference: Y. Ouyang, L. Xie, H. Zha, G. Cheng, "Transfer Learning for Diffusion Models", NeurIPS 2024,
https://arxiv.org/abs/2405.16876.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from shared_embed.errors import ConfigError, DataError, ShapeError
from shared_embed.train import TrainConfig, TrainHistory, fit
from shared_embed.validation import (
    check_choice,
    check_context,
    check_fraction,
    check_matches,
    check_matrix,
    check_positive_float,
    check_positive_int,
    check_tensor,
)

from ..sampling import ScoreFn
from ..schedule import VPSchedule
from .classifier import DensityRatio, fit_domain_classifier
from .compose import GuidedScore
from .guidance import DAMPING, POSITIVITY, GuidanceNetwork, SourcePosterior, guidance_loss
from .premise import PremiseReport, check_premise
from .regularizers import consistency_loss, cycle_loss

__all__ = ["TGDPConfig", "TGDPFit", "fit_tgdp"]


_TRAIN_FIELDS = ("classifier_train", "guidance_train", "time_classifier_train")


@dataclass
class TGDPConfig:
    """Settings of :func:`fit_tgdp`.

    ``damping`` and ``rao_blackwell`` (the posterior-mean target of L_guide): see ``diffusion.tgdp.guidance``.
    ``eta_cycle`` / ``eta_consistency`` weigh the regularisers (0 switches one off; the cycle classifier is
    trained only when ``eta_cycle > 0``). ``balanced``: equal class weights in the classifiers (prior factor 1)
    instead of pooled proportions (prior factor n_s / n_t).

    ``target_coverage`` (needs ``rao_blackwell``): weight of L_guide evaluated ALSO at noised target rows, with
    the same Rao-Blackwellised target E_p[w | x_t]. The minimiser is still h_t, but the regression now sees
    the regions where q_t has its mass: on source rows alone it rarely visits the target modes when they lie
    in the source's tails (at small t), and the learned log h stays too flat there. Off (0) by default, as in
    the paper: it helps with an exact w but hurts with a classifier's w, whose ratio is least reliable at the
    target rows (docs/notes/2026-11-24-tgdp-guidance-training.md).

    Raises:
        ConfigError: an unknown ``positivity`` or ``damping``, a negative weight, ``target_coverage`` without
            ``rao_blackwell``, ``target_batch`` < 1 or ``t_eps`` outside (0, 1).
    """

    classifier_hidden: Sequence[int] = (64, 64)
    classifier_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=2000, lr=1e-3, optimizer="adamw", weight_decay=1e-4, description="domain classifier"
        )
    )
    balanced: bool = False
    guidance_hidden: Sequence[int] = (128, 128, 128)
    positivity: str = "exp"
    damping: str = "alpha"
    rao_blackwell: bool = True
    guidance_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=4000, lr=1e-3, description="guidance")
    )
    eta_cycle: float = 0.0
    eta_consistency: float = 0.0
    time_classifier_hidden: Sequence[int] = (64, 64)
    time_classifier_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=3000, lr=1e-3, optimizer="adamw", weight_decay=1e-4, description="time classifier"
        )
    )
    target_coverage: float = 0.0
    target_batch: int = 256
    t_eps: float = 1e-5

    def __post_init__(self) -> None:
        check_choice("positivity", self.positivity, POSITIVITY)
        check_choice("damping", self.damping, DAMPING)
        check_positive_float("eta_cycle", self.eta_cycle, allow_zero=True)
        check_positive_float("eta_consistency", self.eta_consistency, allow_zero=True)
        check_positive_float("target_coverage", self.target_coverage, allow_zero=True)
        if self.target_coverage > 0 and not self.rao_blackwell:
            raise ConfigError("target_coverage needs rao_blackwell=True: target rows have no w(x_0) to regress onto")
        check_positive_int("target_batch", self.target_batch)
        check_fraction("t_eps", self.t_eps)

    @property
    def regularized(self) -> bool:
        return self.eta_cycle > 0 or self.eta_consistency > 0

    @property
    def uses_target_rows(self) -> bool:
        """Whether the guidance loss draws target rows (the regularisers or target coverage)."""
        return self.regularized or self.target_coverage > 0

    @classmethod
    def from_options(cls, options: dict[str, Any], seed: int) -> TGDPConfig:
        """Settings from plain options (a config table: field names; the ``*_train`` fields as TrainConfig
        keyword dicts over this class's defaults), every training run seeded with ``seed``."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown tgdp option(s) {unknown}; valid: {sorted(known)}")
        base = cls()
        kwargs: dict[str, Any] = {k: v for k, v in options.items() if k not in _TRAIN_FIELDS}
        for name in _TRAIN_FIELDS:
            default: TrainConfig = getattr(base, name)
            kwargs[name] = default.replace(**{**options.get(name, {}), "seed": seed})
        return cls(**kwargs)


@dataclass
class TGDPFit:
    """A fitted TGDP model: ``score`` (the composed ScoreFn), its pieces and the loop's histories."""

    score: GuidedScore
    guidance: GuidanceNetwork
    ratio: DensityRatio | None
    time_ratio: DensityRatio | None
    source_weights: Tensor
    histories: dict[str, TrainHistory]
    premise: PremiseReport | None = None


def fit_tgdp(
    source_score: ScoreFn,
    source_x: Tensor,
    target_x: Tensor,
    *,
    source_context: Tensor | None = None,
    target_context: Tensor | None = None,
    schedule: VPSchedule | None = None,
    config: TGDPConfig | None = None,
    source_weights: Tensor | None = None,
) -> TGDPFit:
    """Fit the classifier(s) and the guidance; return the composed target score.

    Args:
        source_score: the frozen source model's score ``score(x, t, context)`` (conditional on y when contexts
            are given).
        source_x (n_s, d) / target_x (n_t, d): the two samples; source_context / target_context: (n, k) labels
            for conditional TGDP, both or neither.
        schedule: the forward process of the source model (default linear VP).
        source_weights: the density ratios w(x_0) (n_s,) at the source rows when they are known (e.g. exact, to
            isolate the guidance fit); the domain classifier is then not trained and ``ratio`` is None.

    Raises:
        ShapeError, DataError, DTypeError: bad samples or contexts (named in the message).
    """
    config = config or TGDPConfig()
    schedule = schedule or VPSchedule()
    source_x, target_x, k = _checked_samples(source_x, target_x, source_context, target_context)
    histories: dict[str, TrainHistory] = {}
    ratio, w0 = _source_ratios(source_x, target_x, source_context, target_context, source_weights, config, histories)
    premise = None
    if ratio is not None:  # the premise check (warns naming what fails) before any guidance is fitted
        with torch.no_grad():
            premise = check_premise(w0, ratio.ratio(target_x, None, target_context))
    time_ratio = None
    if config.eta_cycle > 0:
        time_ratio, histories["time_classifier"] = fit_domain_classifier(
            source_x,
            target_x,
            source_context=source_context,
            target_context=target_context,
            hidden=config.time_classifier_hidden,
            time_dependent=True,
            schedule=schedule,
            balanced=config.balanced,
            target_batch=config.target_batch,
            t_eps=config.t_eps,
            config=config.time_classifier_train,
        )

    guidance = GuidanceNetwork(
        source_x.shape[1],
        k,
        config.guidance_hidden,
        positivity=config.positivity,
        damping=config.damping,
        schedule=schedule,
    ).to(source_x)
    posterior = SourcePosterior(source_x, w0, schedule, source_context) if config.rao_blackwell else None
    loss_fn = _guidance_objective(
        guidance, source_score, schedule, config, posterior, time_ratio, target_x, target_context
    )
    data = (source_x, w0) if source_context is None else (source_context, source_x, w0)
    histories["guidance"] = fit(guidance, loss_fn, data, config=config.guidance_train)
    guidance.requires_grad_(False)
    return TGDPFit(GuidedScore(source_score, guidance), guidance, ratio, time_ratio, w0, histories, premise)


def _checked_samples(
    source_x: Tensor, target_x: Tensor, source_context: Tensor | None, target_context: Tensor | None
) -> tuple[Tensor, Tensor, int | None]:
    """The validated samples and the context width k (None for unconditional TGDP)."""
    source_x = check_matrix("source_x", source_x)
    target_x = check_matches(
        "target_x", check_matrix("target_x", target_x, source_x.shape[1]), source_x, owner="source_x"
    )
    if (source_context is None) != (target_context is None):
        raise ShapeError("give source_context and target_context together (both or neither)")
    if source_context is None or target_context is None:  # both or neither (checked above)
        return source_x, target_x, None
    k = check_matrix("source_context", source_context).shape[1]
    check_context("source_context", source_context, k, rows=source_x.shape[0])
    check_context("target_context", target_context, k, rows=target_x.shape[0])
    for name, ctx in (("source_context", source_context), ("target_context", target_context)):
        check_matches(name, ctx, source_x, owner="source_x")
    return source_x, target_x, k


def _source_ratios(
    source_x: Tensor,
    target_x: Tensor,
    source_context: Tensor | None,
    target_context: Tensor | None,
    source_weights: Tensor | None,
    config: TGDPConfig,
    histories: dict[str, TrainHistory],
) -> tuple[DensityRatio | None, Tensor]:
    """(the domain classifier's ratio or None, w(x_0) at the source rows (n_s,)): the given weights, checked,
    or the classifier's ratio (its training history goes into ``histories``)."""
    if source_weights is not None:
        w0 = check_matches(
            "source_weights",
            check_tensor("source_weights", source_weights, ndim=1, rows=source_x.shape[0]),
            source_x,
            owner="source_x",
        )
        if bool((w0 < 0).any()):
            raise DataError("source_weights are density ratios and must be >= 0")
        return None, w0
    ratio, histories["classifier"] = fit_domain_classifier(
        source_x,
        target_x,
        source_context=source_context,
        target_context=target_context,
        hidden=config.classifier_hidden,
        balanced=config.balanced,
        target_batch=config.target_batch,
        config=config.classifier_train,
    )
    with torch.no_grad():
        return ratio, ratio.ratio(source_x, None, source_context)


def _guidance_objective(
    guidance: GuidanceNetwork,
    source_score: ScoreFn,
    schedule: VPSchedule,
    config: TGDPConfig,
    posterior: SourcePosterior | None,
    time_ratio: DensityRatio | None,
    target_x: Tensor,
    target_context: Tensor | None,
) -> Callable[[Sequence[Tensor]], Tensor]:
    """The guidance's training loss on a batch of source rows ((context,) x0, w): L_guide, plus on a batch of
    target rows the target-coverage term and the two regularisers when they are switched on."""
    n_t = target_x.shape[0]

    def loss_fn(batch: Sequence[Tensor]) -> Tensor:
        ctx = batch[0] if len(batch) == 3 else None
        x0, w = batch[-2], batch[-1]
        loss = guidance_loss(guidance, schedule, x0, w, ctx, config.t_eps, posterior)
        if not config.uses_target_rows:
            return loss
        idx = (
            torch.randint(0, n_t, (config.target_batch,), device=target_x.device)
            if n_t > config.target_batch
            else slice(None)
        )
        xt, ct = target_x[idx], (None if target_context is None else target_context[idx])
        if config.target_coverage > 0:
            loss = loss + config.target_coverage * guidance_loss(
                guidance, schedule, xt, None, ct, config.t_eps, posterior
            )
        if time_ratio is not None:
            loss = loss + config.eta_cycle * cycle_loss(guidance, time_ratio.ratio, schedule, xt, ct, config.t_eps)
        if config.eta_consistency > 0:
            loss = loss + config.eta_consistency * consistency_loss(
                guidance, source_score, schedule, xt, ct, config.t_eps
            )
        return loss

    return loss_fn
