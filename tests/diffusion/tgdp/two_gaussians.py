"""The two-Gaussian task of the TGDP paper as the TGDP known-answer tests use it: the exact guidance and scores,
grids and labels (every piece analytic: p_t, q_t, h_t = q_t / p_t)."""

from __future__ import annotations

import torch

from diffusion import VPSchedule
from diffusion.tgdp import FunctionGuidance, GuidanceNetwork
from theory.truth.tasks import TwoGaussianTask

SCH = VPSchedule()
TASK = TwoGaussianTask()
F64 = torch.float64


def exact_log_h(conditional: bool):
    """log h_t(x[, y]) of the task as a ``log_h(x, t, context)`` function (context ignored if unconditional)."""

    def log_h(x, t, context):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        return TASK.log_guidance(x, SCH.alpha(t), SCH.sigma(t), context if conditional else None)

    return log_h


EXACT = FunctionGuidance(exact_log_h(False))
EXACT_COND = FunctionGuidance(exact_log_h(True))
SOURCE = TASK.score_fn("source", SCH)
TARGET = TASK.score_fn("target", SCH)
SOURCE_COND = TASK.score_fn("source", SCH, conditional=True)
TARGET_COND = TASK.score_fn("target", SCH, conditional=True)


def grid() -> torch.Tensor:
    g = torch.linspace(-2.0, 2.0, 9, dtype=F64)
    return torch.cartesian_prod(g, g)  # (81, 2)


def labels(n: int) -> torch.Tensor:
    return torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).to(F64)[:, None]


def perturbed(net: GuidanceNetwork, scale: float = 1.0, seed: int = 0) -> GuidanceNetwork:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.net[-1].parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return net
