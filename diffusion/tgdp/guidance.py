"""The guidance h_t(x) = q_t(x) / p_t(x): its network, its regression loss, its Rao-Blackwellised target.

For the same forward kernel in both domains, h_t(x) = E_{p(x_0 | x_t = x)}[w(x_0)] with w = q / p, so h_t is the
minimiser of the regression on SOURCE samples (docs/theory.md, 'TGDP', step 2)

    L_guide = E_{x_0 ~ p, t ~ U(t_eps, 1), e} ( h_psi(x_t, t) - w(x_0) )^2,   x_t = a_t x_0 + s_t e.

The regression is onto w, not log w: E[log w | x_t] <= log E[w | x_t] = log h_t (Jensen), strictly when w varies
given x_t, so a log-regression is biased low exactly where the guidance matters.

- :class:`GuidanceNetwork`: h_psi(x (n, d), t (n,)[, context (n, k)]) > 0, (n,). ``positivity="exp"`` gives
  h = exp(f), ``"softplus"`` h = softplus(f) (log h stable for very negative f); the output layer starts at
  h = 1, the exact guidance at t = 1 (E_p[w] = 1). ``damping="alpha"`` (default) writes
  log h = a_t * log(positivity(f)): as a_t -> 0, p_t and q_t both tend to N(0, I) and log h_t = O(a_t), so the
  network's target stays O(1) at every t and h_1 = 1 is built in.
- :class:`SourcePosterior`: E_{p_hat}[w | x_t = x] = sum_i w_i N(x; a_t x_i, s_t^2 I) / sum_i N(x; a_t x_i, s_t^2 I)
  under the empirical source sample. Regressing onto it instead of w(x_0) changes L_guide by a constant only
  (same minimiser, same expected gradient) and removes the variance of w given x_t from every step.
- :func:`guidance_loss`: L_guide on a batch, onto w(x_0) or onto the posterior mean.
- :class:`FunctionGuidance`: a known log h (e.g. the exact one of a two-Gaussian task) as a :class:`Guidance`.

Damping and the Rao-Blackwellised target are the defaults for what they did to the KL of the composed score
on the TGDP simulation: docs/notes/2026-11-24-tgdp-guidance-training.md.

Example:
    >>> g = GuidanceNetwork(2)
    >>> x0, w0 = torch.randn(64, 2), torch.rand(64) + 0.5
    >>> guidance_loss(g, VPSchedule(), x0, w0).backward()
    >>> g.h(torch.randn(5, 2), torch.rand(5)).shape
    torch.Size([5])

Reference: Y. Ouyang, L. Xie, H. Zha, G. Cheng, "Transfer Learning for Diffusion Models", NeurIPS 2024,
https://arxiv.org/abs/2405.16876.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shared_embed.errors import ConfigError
from shared_embed.mlp import mlp
from shared_embed.validation import check_choice, check_context, check_positive_int, check_tensor

from ..network import SinusoidalEmbedding
from ..schedule import VPSchedule
from .inputs import check_points, noised_rows

__all__ = [
    "DAMPING",
    "POSITIVITY",
    "FunctionGuidance",
    "Guidance",
    "GuidanceNetwork",
    "LogGuidanceFn",
    "SourcePosterior",
    "guidance_loss",
    "log_softplus",
]

POSITIVITY = ("exp", "softplus")
DAMPING = ("alpha", "none")
#: ``log_h(x (n, d), t (n,), context) -> (n,)``: a log-guidance as a plain function.
LogGuidanceFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


class Guidance(Protocol):
    """What the losses and the composed score need of a guidance: h and log h, each (n,)."""

    def h(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor: ...
    def log_h(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor: ...


class FunctionGuidance:
    """A :class:`Guidance` from a log-guidance function, e.g. the exact ``TwoGaussianTask.log_guidance``.

    Example:
        >>> exact = FunctionGuidance(lambda x, t, y: task.log_guidance(x, sch.alpha(t), sch.sigma(t), y))
    """

    def __init__(self, log_h: LogGuidanceFn) -> None:
        if not callable(log_h):
            raise TypeError(f"log_h must be callable as log_h(x, t, context), got {type(log_h).__name__}")
        self._log_h = log_h

    def log_h(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        return self._log_h(x, t, context)

    def h(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        return self.log_h(x, t, context).exp()


class GuidanceNetwork(nn.Module):
    """h_psi(x_t, t[, context]) > 0, (n,): an MLP on [x_t, context, sinusoidal(log(s_t / a_t))].

    Args:
        features: d; context_features: k (labels for conditional TGDP) or None.
        hidden / activation: the MLP (a smooth activation: the likelihood differentiates log h twice).
        time_features: size of the noise-level embedding; positivity: ``"exp"`` or ``"softplus"``.
        damping: ``"alpha"`` (log h = a_t log positivity(f)) or ``"none"`` (module docstring).
        schedule: the forward process whose noise level the network reads.

    Example:
        >>> g = GuidanceNetwork(2)
        >>> g.h(torch.randn(5, 2), torch.rand(5)).shape     # all ones before training
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        context_features: int | None = None,
        hidden: Sequence[int] = (128, 128, 128),
        activation: str = "silu",
        time_features: int = 32,
        positivity: str = "exp",
        damping: str = "alpha",
        schedule: VPSchedule | None = None,
    ) -> None:
        super().__init__()
        self.features = check_positive_int("features", features)
        self.context_features = (
            None if context_features is None else check_positive_int("context_features", context_features)
        )
        self.positivity = check_choice("positivity", positivity, POSITIVITY)
        self.damping = check_choice("damping", damping, DAMPING)
        self.schedule = schedule or VPSchedule()
        self.time = SinusoidalEmbedding(time_features)
        self.net = mlp(features + (context_features or 0) + time_features, 1, tuple(hidden), activation)
        last = cast(nn.Linear, self.net[-1])  # mlp() ends with a Linear
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, 0.0 if positivity == "exp" else math.log(math.e - 1.0))  # h = 1

    def raw(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The unconstrained output f (n,) and the times t (n,)."""
        x, t = check_points(x, self.features, t, required=True)
        context = check_context("context", context, self.context_features, rows=x.shape[0])
        parts = [x] if context is None else [x, context]
        parts.append(self.time(self.schedule.noise_level(t).to(t)))
        return self.net(torch.cat(parts, dim=-1)).squeeze(-1), t

    def log_h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """log h_psi, (n,)."""
        f, t = self.raw(x, t, context)
        log_h = f if self.positivity == "exp" else log_softplus(f)
        return self.schedule.alpha(t).to(f) * log_h if self.damping == "alpha" else log_h

    def h(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """h_psi > 0, (n,)."""
        if self.damping == "none" and self.positivity == "softplus":
            return F.softplus(self.raw(x, t, context)[0])
        return self.log_h(x, t, context).exp()

    def forward(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        return self.h(x, t, context)


def log_softplus(f: Tensor) -> Tensor:
    """log(softplus(f)) without underflow: softplus(f) = e^f (1 + O(e^f)), so log softplus(f) = f for f < -20."""
    safe = f.clamp_min(-20.0)
    return torch.where(f < -20.0, f, torch.log(F.softplus(safe)))


class SourcePosterior:
    """E_{p_hat}[w(x_0) | x_t = x[, y]] under the empirical source sample: the Rao-Blackwellised L_guide target.

    Posterior weights softmax_i( -|x - a_t x_i|^2 / (2 s_t^2) ) over the source rows x_i (restricted to rows
    with the same context when contexts are given: the conditional version's p_hat(x_0 | x_t, y)).

    Args:
        source_x (n_s, d), source_w (n_s,): the source sample and its ratios w(x_i); source_context (n_s, k) or
            None; schedule: the forward process. Each call builds an (n, n_s) weight matrix.
    """

    def __init__(
        self, source_x: Tensor, source_w: Tensor, schedule: VPSchedule, source_context: Tensor | None = None
    ) -> None:
        self.x = check_tensor("source_x", source_x, ndim=2, min_rows=1).detach()
        self.w = check_tensor("source_w", source_w, ndim=1, rows=source_x.shape[0]).detach()
        self.context = (
            None
            if source_context is None
            else check_tensor("source_context", source_context, ndim=2, rows=source_x.shape[0]).detach()
        )
        self.schedule = schedule
        self.sq_norm = self.x.square().sum(-1)

    @torch.no_grad()
    def mean_ratio(self, x_t: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        """E_{p_hat}[w | x_t] (n,) for x_t (n, d) at times t (n,) [with contexts (n, k)]."""
        check_tensor("x_t", x_t, ndim=2, last_dim=self.x.shape[1], min_rows=1)
        check_context("context", context, None if self.context is None else self.context.shape[1], rows=x_t.shape[0])
        a = self.schedule.alpha(t).to(x_t).unsqueeze(-1)
        var = self.schedule.sigma(t).to(x_t).square().unsqueeze(-1)
        logits = (a * (x_t @ self.x.T) - 0.5 * a.square() * self.sq_norm) / var
        if context is not None and self.context is not None:  # check_context: both or neither
            same = (context.unsqueeze(1) == self.context.unsqueeze(0)).all(-1)
            logits = logits.masked_fill(~same, float("-inf"))
        return (torch.softmax(logits, dim=-1) * self.w).sum(-1)


def guidance_loss(
    guidance: Guidance,
    schedule: VPSchedule,
    x0: Tensor,
    w0: Tensor | None,
    context: Tensor | None = None,
    t_eps: float = 1e-5,
    posterior: SourcePosterior | None = None,
) -> Tensor:
    """L_guide = mean (h(x_t, t) - w(x_0))^2 over source rows x0 (n, d) with ratios w0 (n,); t stratified.

    ``w0`` are the density ratios w(x_0) (from :class:`~diffusion.tgdp.classifier.DensityRatio` or exact),
    computed once and held fixed (they carry no gradient). With ``posterior`` (built on the whole source
    sample the rows x0 are drawn from), the target is E[w | x_t] instead of w(x_0): the same loss up to a
    constant, with lower-variance gradients (module docstring). ``w0`` is then unused and may be None, and
    x0 may be ANY rows, target ones included: E_p[w | x_t = x] is defined at every x, and the pointwise
    minimiser of the regression is h_t wherever the rows put mass (``TGDPConfig.target_coverage``).

    Raises:
        ConfigError: neither ``w0`` nor ``posterior``. ShapeError: x0 not (n, d), w0 not (n,), contexts not (n, k).
    """
    t, x_t, _ = noised_rows(schedule, x0, t_eps)
    if posterior is None:
        if w0 is None:
            raise ConfigError("guidance_loss needs the ratios w0 or a SourcePosterior (Rao-Blackwellised target)")
        check_tensor("w0", w0, ndim=1, rows=x0.shape[0])
        target = w0.detach()
    else:
        target = posterior.mean_ratio(x_t, t, context)
    return (guidance.h(x_t, t, context) - target).square().mean()
