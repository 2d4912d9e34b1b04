"""Domain classifiers and the density ratios they give (docs/theory.md, 'TGDP', steps 1 and 3).

A classifier c(x[, t][, y]) = P(source | x) is trained with binary cross-entropy on source (label 1) and
target (label 0) samples. With class weights pi_s, pi_t in the loss, its Bayes optimum is
c = pi_s p / (pi_s p + pi_t q), so the density ratio is

    w(x) = q(x) / p(x) = ((1 - c(x)) / c(x)) * (pi_s / pi_t),   log w = -logit c + log(pi_s / pi_t).

The class-prior factor pi_s / pi_t is kept explicit (:attr:`DensityRatio.prior_factor`). Plain BCE over the
pooled n_s + n_t samples has pi_s / pi_t = n_s / n_t (the default); ``balanced=True`` weights the two classes
equally and the factor is 1. Either way the loss is computed as pi_s * mean BCE(source batch) + pi_t * mean
BCE(target batch), with the target batch drawn afresh each step: the pooled-sample BCE in expectation, without
the variance of a batch that holds 0 or 1 of n_t = 10 target points.

A *time-dependent* classifier c'(x_t, t) (``time_dependent=True``) sees both domains noised by the same
forward process at the same t, so the same formula gives q_t / p_t: the cycle regulariser's reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared_embed.errors import ConfigError, ShapeError
from shared_embed.mlp import mlp
from shared_embed.train import TrainConfig, TrainHistory, fit
from shared_embed.validation import check_context, check_fraction, check_matrix, check_positive_int

from ..network import SinusoidalEmbedding
from ..schedule import VPSchedule, stratified_times
from .inputs import check_points

__all__ = ["DensityRatio", "DomainClassifier", "class_weights", "fit_domain_classifier"]


class DomainClassifier(nn.Module):
    """logit P(source | x[, t][, context]): an MLP on [x, context, time features] -> (n,).

    Args:
        features: d of x; context_features: k of the context (labels y for conditional TGDP) or None.
        hidden: MLP widths (``()`` gives logistic regression); activation: an ``shared_embed.mlp`` name.
        time_dependent: read the noise level log(s_t / a_t) of ``schedule`` through a sinusoidal embedding
            of ``time_features`` features (the cycle regulariser's c'(x_t, t)).

    Example:
        >>> clf = DomainClassifier(2, hidden=(32, 32))
        >>> clf.logit(torch.randn(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        context_features: int | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: str = "silu",
        time_dependent: bool = False,
        schedule: VPSchedule | None = None,
        time_features: int = 16,
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.context_features = (
            None if context_features is None else check_positive_int("context_features", context_features)
        )
        self.time_dependent = bool(time_dependent)
        self.schedule = schedule or VPSchedule()
        self.time = SinusoidalEmbedding(time_features) if self.time_dependent else None
        width = features + (context_features or 0) + (time_features if self.time_dependent else 0)
        self.net = mlp(width, 1, tuple(hidden), activation)

    def logit(self, x: Tensor, t: Tensor | float | None = None, context: Tensor | None = None) -> Tensor:
        """log c / (1 - c), (n,), for x (n, features), t (n,) or a number (time-dependent only), context (n, k)."""
        x, t = check_points(x, self.features, t, required=self.time_dependent, name_t="t")
        context = check_context("context", context, self.context_features, rows=x.shape[0])
        parts = [x]
        if context is not None:
            parts.append(context)
        if self.time is not None and t is not None:  # a time-dependent classifier requires t
            parts.append(self.time(self.schedule.noise_level(t).to(t)))
        logit: Tensor = self.net(torch.cat(parts, dim=-1)).squeeze(-1)
        return logit

    def forward(self, x: Tensor, t: Tensor | float | None = None, context: Tensor | None = None) -> Tensor:
        return self.logit(x, t, context)


class DensityRatio(nn.Module):
    """w = ((1 - c) / c) * prior_factor from a trained :class:`DomainClassifier`; (n,) per call.

    ``prior_factor`` = pi_s / pi_t, the ratio of the class weights the classifier was trained with
    (n_s / n_t for plain pooled BCE, 1 for balanced classes). Omitting it biases log w by -log(pi_s / pi_t).

    Example:
        >>> ratio = DensityRatio(clf, prior_factor=10_000 / 100)
        >>> ratio.log_ratio(x).shape   # (n,)
    """

    def __init__(self, classifier: DomainClassifier, prior_factor: float) -> None:
        super().__init__()
        if not (isinstance(prior_factor, (int, float)) and math.isfinite(prior_factor) and prior_factor > 0):
            raise ConfigError(f"prior_factor must be a finite number > 0, got {prior_factor!r}")
        self.classifier = classifier
        self.prior_factor = float(prior_factor)

    def log_ratio(self, x: Tensor, t: Tensor | float | None = None, context: Tensor | None = None) -> Tensor:
        """log w = -logit c + log prior_factor, (n,)."""
        return -self.classifier.logit(x, t, context) + math.log(self.prior_factor)

    def ratio(self, x: Tensor, t: Tensor | float | None = None, context: Tensor | None = None) -> Tensor:
        """w = exp(log w), (n,)."""
        return self.log_ratio(x, t, context).exp()

    def forward(self, x: Tensor, t: Tensor | float | None = None, context: Tensor | None = None) -> Tensor:
        return self.ratio(x, t, context)


def class_weights(n_source: int, n_target: int, balanced: bool) -> tuple[float, float]:
    """(pi_s, pi_t): the pooled-sample proportions, or (1/2, 1/2) when ``balanced``."""
    check_positive_int("n_source", n_source)
    check_positive_int("n_target", n_target)
    if balanced:
        return 0.5, 0.5
    total = n_source + n_target
    return n_source / total, n_target / total


def fit_domain_classifier(
    source_x: Tensor,
    target_x: Tensor,
    *,
    source_context: Tensor | None = None,
    target_context: Tensor | None = None,
    hidden: Sequence[int] = (64, 64),
    time_dependent: bool = False,
    schedule: VPSchedule | None = None,
    balanced: bool = False,
    target_batch: int = 256,
    t_eps: float = 1e-5,
    config: TrainConfig | None = None,
) -> tuple[DensityRatio, TrainHistory]:
    """Train c(x[, t][, y]) by BCE through ``shared_embed.train.fit``; return its :class:`DensityRatio`.

    Args:
        source_x (n_s, d), target_x (n_t, d): samples of the two domains; the contexts (n_s, k) / (n_t, k)
            (labels for conditional TGDP) must be given for both or neither.
        time_dependent: train c'(x_t, t) on both domains noised at t ~ U(t_eps, 1) (stratified per batch).
        balanced: equal class weights (prior factor 1) instead of pooled proportions (n_s / n_t).
        target_batch: target rows drawn (with replacement) per step when n_t exceeds it; else all n_t rows.
        config: the loop's settings (default 2000 steps, lr 1e-3, weight decay 1e-4 with AdamW).
    """
    source_x = check_matrix("source_x", source_x)
    target_x = check_matrix("target_x", target_x, source_x.shape[1])
    if (source_context is None) != (target_context is None):
        raise ShapeError("give source_context and target_context together (both or neither)")
    k = None if source_context is None else check_matrix("source_context", source_context).shape[1]
    check_context("source_context", source_context, k, rows=source_x.shape[0])
    check_context("target_context", target_context, k, rows=target_x.shape[0])
    check_positive_int("target_batch", target_batch)
    check_fraction("t_eps", t_eps)
    schedule = schedule or VPSchedule()
    config = config or TrainConfig(
        steps=2000, lr=1e-3, optimizer="adamw", weight_decay=1e-4, description="domain classifier"
    )
    pi_s, pi_t = class_weights(source_x.shape[0], target_x.shape[0], balanced)
    clf = DomainClassifier(source_x.shape[1], k, hidden, time_dependent=time_dependent, schedule=schedule).to(source_x)
    n_t = target_x.shape[0]

    def logits(x0: Tensor, ctx: Tensor | None) -> Tensor:
        if not time_dependent:
            return clf.logit(x0, None, ctx)
        t = stratified_times(x0.shape[0], t_eps, x0)
        x_t, _ = schedule.marginal(x0, t)
        return clf.logit(x_t, t, ctx)

    def loss_fn(batch: Sequence[Tensor]) -> Tensor:
        xs, cs = batch[-1], (batch[0] if k is not None else None)
        idx = torch.randint(0, n_t, (target_batch,), device=target_x.device) if n_t > target_batch else slice(None)
        xt, ct = target_x[idx], (None if target_context is None else target_context[idx])
        ls, lt = logits(xs, cs), logits(xt, ct)
        return pi_s * F.binary_cross_entropy_with_logits(
            ls, torch.ones_like(ls)
        ) + pi_t * F.binary_cross_entropy_with_logits(lt, torch.zeros_like(lt))

    data = (source_x,) if source_context is None else (source_context, source_x)
    history = fit(clf, loss_fn, data, config=config)
    clf.requires_grad_(False)
    return DensityRatio(clf, pi_s / pi_t), history
