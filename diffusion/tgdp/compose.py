"""Composed scores: TGDP's target score and Domain Guidance, as plain ``score(x, t, context)`` functions.

TGDP (docs/theory.md, 'TGDP'): grad log q_t = grad log p_t + grad log h_t, so with a frozen source score and a
guidance, :class:`GuidedScore` is a ScoreFn that ``sample_sde``, ``sample_ode`` and
``probability_flow_log_prob`` take unchanged. grad_x log h comes from autograd; it is built with
``create_graph`` whenever grad mode is on at the call, so the likelihood's divergence (which differentiates the
score once more) and the consistency loss (which backpropagates into the guidance's parameters) both work;
under ``torch.no_grad()`` (sampling) the gradient is taken locally and returned without a graph.

Domain Guidance (Zhong et al., ICLR 2025): e = e_src + w (e_ft - e_src); since e = -s_t * score for every model
on one schedule, the same line holds for scores: s = s_src + w (s_ft - s_src) (:func:`domain_guidance_score`).

References:
    Y. Ouyang, L. Xie, H. Zha, G. Cheng, "Transfer Learning for Diffusion Models", NeurIPS 2024,
    https://arxiv.org/abs/2405.16876.
    J. Zhong, X. Zhang, J. Wang, M. Long, "Domain Guidance: A Simple Transfer Approach for a Pre-trained
    Diffusion Model", ICLR 2025, https://arxiv.org/abs/2504.01521.
"""

from __future__ import annotations

import torch
from torch import Tensor

from shared_embed.errors import DTypeError, ShapeError
from shared_embed.validation import check_positive_float, check_tensor

from ..sampling import ScoreFn, check_times
from .guidance import Guidance

__all__ = ["DomainGuidanceScore", "GuidedScore", "check_score_and_guidance", "domain_guidance_score", "guidance_grad"]


def guidance_grad(guidance: Guidance, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
    """grad_x log h(x, t, context), (n, d), by autograd (with a graph when grad mode is on; see module doc).

    A guidance with its own ``grad_log_h(x, t, context)`` (e.g. :class:`~diffusion.tgdp.tilt_guidance.TiltGuidance`,
    whose log h is only known up to quadrature) gives the gradient itself."""
    own = getattr(guidance, "grad_log_h", None)
    if callable(own):
        grad: Tensor = own(x, t, context)
        if grad.shape != x.shape:
            raise ShapeError(f"grad_log_h must return {tuple(x.shape)}, got {tuple(grad.shape)}")
        return grad
    create = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        log_h = guidance.log_h(xg, t, context)
        if log_h.shape != (x.shape[0],):
            raise ShapeError(f"log_h must return ({x.shape[0]},), got {tuple(log_h.shape)}")
        (grad,) = torch.autograd.grad(log_h.sum(), xg, create_graph=create)
    return grad


def check_score_and_guidance(source_score: object, guidance: object) -> None:
    """DTypeError unless ``source_score`` is callable as score(x, t, context) and ``guidance`` has a log_h method."""
    if not callable(source_score):
        raise DTypeError(f"source_score must be callable as score(x, t, context), got {type(source_score).__name__}")
    if not callable(getattr(guidance, "log_h", None)):
        raise DTypeError(f"guidance must have a log_h(x, t, context) method, got {type(guidance).__name__}")


class GuidedScore:
    """TGDP's target score s_src(x, t, ctx) + grad_x log h(x, t, ctx), (n, d): a ScoreFn.

    Args:
        source_score: the frozen source score (e.g. ``DiffusionHead.score`` or an exact task score).
        guidance: anything with ``log_h(x, t, context) -> (n,)``: a trained
            :class:`~diffusion.tgdp.guidance.GuidanceNetwork` or the exact
            :class:`~diffusion.tgdp.guidance.FunctionGuidance`.

    Example:
        >>> score = GuidedScore(source_head.score, guidance_net)
        >>> x0 = sample_ode(score, torch.randn(1000, 2), VPSchedule())
        >>> lp = probability_flow_log_prob(score, x0, VPSchedule())
    """

    def __init__(self, source_score: ScoreFn, guidance: Guidance) -> None:
        check_score_and_guidance(source_score, guidance)
        self.source_score = source_score
        self.guidance = guidance

    def __call__(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        check_tensor("x", x, ndim=2, min_rows=1)
        t = check_times("t", t, x)
        if context is not None:
            check_tensor("context", context, ndim=2, rows=x.shape[0])
        return self.source_score(x, t, context) + guidance_grad(self.guidance, x, t, context)


class DomainGuidanceScore:
    """s_src + weight (s_ft - s_src), (n, d): Domain Guidance in score form (a ScoreFn).

    ``weight`` = 1 is the fine-tuned model itself, 0 the source model; Zhong et al. use weights above 1.
    """

    def __init__(self, source_score: ScoreFn, finetuned_score: ScoreFn, weight: float = 1.5) -> None:
        for name, fn in (("source_score", source_score), ("finetuned_score", finetuned_score)):
            if not callable(fn):
                raise DTypeError(f"{name} must be callable as score(x, t, context), got {type(fn).__name__}")
        self.source_score = source_score
        self.finetuned_score = finetuned_score
        self.weight = check_positive_float("weight", weight, allow_zero=True)

    def __call__(self, x: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        s_src = self.source_score(x, t, context)
        return s_src + self.weight * (self.finetuned_score(x, t, context) - s_src)


def domain_guidance_score(source_score: ScoreFn, finetuned_score: ScoreFn, weight: float = 1.5) -> ScoreFn:
    """Domain Guidance as a ScoreFn (see :class:`DomainGuidanceScore`)."""
    return DomainGuidanceScore(source_score, finetuned_score, weight)
