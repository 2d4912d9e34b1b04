"""Choosing the switch time of a :class:`~diffusion.tgdp.noisy_guidance.SwitchedScore` from held-out rows.

A switched score uses ``high`` (TGDP's guided score) for t >= tau and ``low`` (a target-only or fine-tuned
score) below. Which tau is best is a question about the target law q, so it is answered on target rows that
``low`` was not trained on, by the denoising score-matching loss with the likelihood weighting beta(t):

    L_tau(s) = int_0^1 beta(t) E_{x_0 ~ val, eps} |s_tau(a_t x_0 + s_t eps, t) + eps / s_t|^2 dt,

whose population value is int beta(t) E_{q_t}|s_tau - grad log q_t|^2 dt plus a constant that no score changes,
that is twice the KL bound of the probability-flow model up to that constant. The loss of a switched score is
the sum of ``low``'s loss over the times below tau and ``high``'s above, so both scores are evaluated once on a
time grid (log-spaced: the errors that matter sit at small t) with the SAME noised points (common random
numbers: the big eps / s_t term cancels in the comparison), and every candidate tau is read off by cumulative
sums. tau = 0 is ``high`` alone and tau = 1 ``low`` alone.

Example:
    >>> choice = select_switch(guided.score, target_head.score, val.x, None, VPSchedule(),
    ...                        candidates=(0.0, 0.05, 0.1, 0.2, 1.0))
    >>> score = choice.score(guided.score, target_head.score)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from shared_embed.errors import ConfigError
from shared_embed.validation import check_positive_int, check_tensor

from ..sampling import ScoreFn
from ..schedule import VPSchedule
from .noisy_guidance import SwitchedScore

__all__ = ["SwitchChoice", "denoising_losses", "select_switch", "time_grid"]


@dataclass(frozen=True)
class SwitchChoice:
    """The chosen switch time, every candidate's held-out loss (the same order) and the time grid used."""

    switch: float
    candidates: tuple[float, ...]
    losses: tuple[float, ...]
    times: tuple[float, ...]

    def score(self, high: ScoreFn, low: ScoreFn) -> ScoreFn:
        """``high`` for tau = 0, ``low`` for tau = 1, else the :class:`SwitchedScore` at tau."""
        if self.switch <= 0.0:
            return high
        if self.switch >= 1.0:
            return low
        return SwitchedScore(high, low, self.switch)


def time_grid(points: int, t_min: float) -> tuple[Tensor, Tensor]:
    """(points,) log-spaced midpoints in [t_min, 1] and their interval edges (points + 1,)."""
    edges = torch.logspace(math.log10(t_min), 0.0, check_positive_int("points", points) + 1, dtype=torch.float64)
    return (edges[:-1] * edges[1:]).sqrt(), edges


def denoising_losses(
    scores: Sequence[ScoreFn],
    x0: Tensor,
    context: Tensor | None,
    schedule: VPSchedule,
    times: Tensor,
    draws: int,
    generator: torch.Generator,
) -> Tensor:
    """(len(scores), len(times)): E |s(x_t, t) + eps / s_t|^2 at each t over the rows x0 (n, d) and ``draws``
    noise draws per row, the same (x_t, eps) for every score."""
    n, d = x0.shape
    out = torch.zeros(len(scores), len(times), dtype=torch.float64)
    x_rep = x0.repeat(draws, 1)
    c_rep = None if context is None else context.repeat(draws, 1)
    for j, t in enumerate(times.tolist()):
        tt = torch.full((n * draws,), t, dtype=x0.dtype)
        eps = torch.randn(n * draws, d, generator=generator, dtype=x0.dtype)
        a, s = schedule.alpha(tt)[:, None], schedule.sigma(tt)[:, None]
        xt = a * x_rep + s * eps
        for i, score in enumerate(scores):
            with torch.no_grad():
                value = score(xt, tt, c_rep)
            out[i, j] = float((value.double() + eps.double() / s.double()).square().sum(-1).mean())
    return out


def select_switch(
    high: ScoreFn,
    low: ScoreFn,
    x0: Tensor,
    context: Tensor | None,
    schedule: VPSchedule,
    candidates: Sequence[float] = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0),
    points: int = 24,
    t_min: float = 1e-3,
    samples: int = 512,
    seed: int = 0,
) -> SwitchChoice:
    """The candidate tau in [0, 1] with the smallest held-out weighted denoising loss (module docstring).

    Args:
        high, low: score functions ``score(x, t, context)``; x0 (n, d) held-out target rows, context (n, k) or None.
        candidates: the switch times to compare (0: ``high`` alone, 1: ``low`` alone).
        points: time-grid size on [t_min, 1]; samples: noised points per time (at least one draw per row).
    """
    check_tensor("x0", x0, ndim=2, min_rows=1)
    if context is not None:
        check_tensor("context", context, ndim=2, rows=x0.shape[0])
    cands = tuple(float(c) for c in candidates)
    if not cands or any(not 0.0 <= c <= 1.0 for c in cands):
        raise ConfigError(f"candidates must be a non-empty list of switch times in [0, 1], got {list(candidates)}")
    if not 0.0 < t_min < 1.0:
        raise ConfigError(f"t_min must lie in (0, 1), got {t_min!r}")
    times, edges = time_grid(points, t_min)
    draws = max(1, math.ceil(check_positive_int("samples", samples) / x0.shape[0]))
    per_t = denoising_losses((high, low), x0, context, schedule, times, draws, torch.Generator().manual_seed(seed))
    weight = schedule.beta(times) * (edges[1:] - edges[:-1])  # beta(t) dt per interval
    high_w, low_w = per_t[0] * weight, per_t[1] * weight
    losses = tuple(float(low_w[times < c].sum() + high_w[times >= c].sum()) for c in cands)
    best = min(range(len(cands)), key=lambda i: (losses[i], cands[i]))
    return SwitchChoice(cands[best], cands, losses, tuple(times.tolist()))
