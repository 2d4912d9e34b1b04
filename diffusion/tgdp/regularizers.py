"""TGDP's two regularisers on TARGET samples (docs/theory.md, 'TGDP', steps 3 and 4).

- cycle: a time-dependent domain classifier c'(x_t, t) gives q_t / p_t directly
  (:func:`~diffusion.tgdp.classifier.fit_domain_classifier` with ``time_dependent=True``), and
  L_cycle = E_{x_0' ~ q, t, e} ( h_psi(x_t', t) - ratio_{c'}(x_t', t) )^2. Zero at h_psi = h_t when c' is exact.
- consistency: denoising score matching of the composed score on target data with the source score frozen,
  L_cons = E_{x_0' ~ q, t, e} lambda(t) || s_src(x_t', t) + grad log h_psi(x_t', t) + (x_t' - a_t x_0') / s_t^2 ||^2.
  We weight by lambda(t) = s_t^2 (the epsilon form: || s_t (s_src + grad log h) + e ||^2), where the reference
  writes lambda = 1: unweighted, the target's variance grows like d / s_t^2 (1e5 at t = 1e-5), and a batch is
  dominated by its smallest t. Like every DSM loss it is not zero at the truth: it equals
  E lambda || s - grad log q_t ||^2 + const, minimal (the constant) exactly at h_psi = h_t.

Both losses take ``t`` stratified over U(t_eps, 1) per batch, sum over features and average over rows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..sampling import ScoreFn
from ..schedule import VPSchedule
from .compose import guidance_grad
from .guidance import Guidance
from .inputs import noised_rows

__all__ = ["RatioFn", "consistency_loss", "cycle_loss"]

#: ``ratio(x_t (n, d), t (n,), context) -> (n,)``: a noised density ratio q_t / p_t (e.g. ``DensityRatio.ratio``).
RatioFn = Callable[[Tensor, Tensor, "Tensor | None"], Tensor]


def cycle_loss(
    guidance: Guidance,
    ratio: RatioFn,
    schedule: VPSchedule,
    x0: Tensor,
    context: Tensor | None = None,
    t_eps: float = 1e-5,
) -> Tensor:
    """L_cycle on target rows x0 (n, d): mean (h(x_t, t) - ratio(x_t, t))^2; the reference ratio is detached."""
    t, x_t, _ = noised_rows(schedule, x0, t_eps)
    reference = ratio(x_t, t, context).detach()
    return (guidance.h(x_t, t, context) - reference).square().mean()


def consistency_loss(
    guidance: Guidance,
    source_score: ScoreFn,
    schedule: VPSchedule,
    x0: Tensor,
    context: Tensor | None = None,
    t_eps: float = 1e-5,
) -> Tensor:
    """L_cons on target rows x0 (n, d): mean_rows || s_t (s_src(x_t) + grad log h(x_t)) + e ||^2.

    The source score is evaluated without a graph (frozen); gradients reach the guidance's parameters only.
    """
    t, x_t, noise = noised_rows(schedule, x0, t_eps)
    s = schedule.sigma(t).to(x0).unsqueeze(-1)
    with torch.no_grad():
        s_src = source_score(x_t, t, context)
    composed = s_src + guidance_grad(guidance, x_t, t, context)
    return (s * composed + noise).square().sum(-1).mean()
