"""Diffusion heads on the frozen embedding: the VP schedule, the score network, samplers, the
probability-flow likelihood and the Girsanov bound. Every sampler and likelihood takes a plain score
function ``score(x (n, d), t (n,), context) -> (n, d)``.

Importing this package registers the head kind ``"diffusion"`` so checkpoints rebuild it.

Example:
    >>> from diffusion import DiffusionHead, VPSchedule, sample_ode, probability_flow_log_prob
    >>> head = DiffusionHead(2, 3, width=32, blocks=2)
    >>> x = sample_ode(head.score, torch.randn(10, 2), VPSchedule(), context=torch.randn(10, 3))
"""

from .bound import GirsanovBound, girsanov_bound, mixture_prior_kl_bound
from .head import PARAMETERIZATIONS, SAMPLERS, DiffusionHead, make_diffusion_head
from .likelihood import (
    DIVERGENCES,
    ProbabilityFlowResult,
    exact_divergence,
    hutchinson_divergence,
    jacobian_trace,
    probability_flow,
    probability_flow_log_prob,
    standard_normal_log_prob,
)
from .network import ScoreNetwork, SinusoidalEmbedding
from .sampling import ODE_METHODS, SDE_METHODS, CountedScore, ScoreFn, sample_ode, sample_sde
from .schedule import SCHEDULES, VPSchedule

__all__ = [
    "DIVERGENCES",
    "ODE_METHODS",
    "PARAMETERIZATIONS",
    "SAMPLERS",
    "SCHEDULES",
    "SDE_METHODS",
    "CountedScore",
    "DiffusionHead",
    "GirsanovBound",
    "ProbabilityFlowResult",
    "ScoreFn",
    "ScoreNetwork",
    "SinusoidalEmbedding",
    "VPSchedule",
    "exact_divergence",
    "girsanov_bound",
    "hutchinson_divergence",
    "jacobian_trace",
    "make_diffusion_head",
    "mixture_prior_kl_bound",
    "probability_flow",
    "probability_flow_log_prob",
    "sample_ode",
    "sample_sde",
    "standard_normal_log_prob",
]
