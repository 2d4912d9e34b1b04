"""Guidance that explodes, detected: the size of grad log h_t against the source score's own size.

TGDP's score is s_src(x, t) + g(x, t) with g = grad_x log h_t. Where the premise holds, g is a correction: the
target score differs from the source score by a bounded amount. Where the target lies outside the source's
support, a learned log h_t has nothing to be calibrated against and its gradient can grow without limit, and a
probability-flow sample or likelihood built on it collapses. Per row the guard reads

    ratio(x, t) = |g(x, t)| / |s_src(x, t)|     (Euclidean norms over the d features)

and calls a row *exploding* when ratio > ``GuidanceLimit.max_ratio``. Default 10: the guidance is then ten times
larger than the whole source score at that point, which is the score of the noised data itself (|s_src| is
about sqrt(d) / s_t for noised rows), so such a row no longer follows the source law in any sense.

:class:`GuardedScore` (a ScoreFn) applies the limit at every call: ``"clip"`` rescales g on exploding rows to
``max_ratio`` |s_src| (direction kept), ``"source"`` drops g on those rows (the source score alone), ``"raise"``
raises :class:`GuidanceExplosionError`. It counts what it did (:class:`GuardCounts`), so a caller can say after
a solve how many rows were clipped. :func:`probe_guidance` measures the same ratio on noised rows at a grid of
times, before anything is sampled or scored (``GuidedDiffusionModel.check_guidance`` refuses the guidance when
more than ``refuse_fraction`` of the probed rows explode).

The limit catches blow-ups, not every wrong guidance: a guidance of the score's own size that points the wrong way
(a target outside the source's support) passes it. The premise check (:mod:`.premise`) and a switch time chosen on
held-out target rows (:mod:`.switch_time`, which refuses when the source score alone is better) catch that case.

Example:
    >>> guarded = GuardedScore(source_head.score, guidance, GuidanceLimit(max_ratio=10.0, action="clip"))
    >>> x0 = sample_ode(guarded, torch.randn(100, 2), VPSchedule())
    >>> guarded.counts.exploded, guarded.counts.rows
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from shared_embed.errors import ConfigError, GentransferError
from shared_embed.validation import check_tensor

from ..sampling import ScoreFn, check_times
from ..schedule import VPSchedule
from .compose import check_score_and_guidance, guidance_grad
from .guidance import Guidance

__all__ = [
    "GUARD_ACTIONS",
    "GuardCounts",
    "GuardedScore",
    "GuidanceExplosionError",
    "GuidanceLimit",
    "GuidanceProbe",
    "guidance_ratio",
    "probe_guidance",
]

GUARD_ACTIONS = ("clip", "source", "raise")
#: |s_src| below this counts as this (a zero source score must not make every guidance 'infinitely' large)
SCORE_FLOOR = 1e-6


class GuidanceExplosionError(GentransferError, RuntimeError):
    """The guidance exceeded its limit on some row and the guard's action is ``"raise"``."""


@dataclass(frozen=True)
class GuidanceLimit:
    """The stated limit (module docstring): a row explodes when |grad log h_t| > ``max_ratio`` * |s_src|.

    ``action`` on exploding rows during a solve: one of ``GUARD_ACTIONS``. ``refuse_fraction``: the share of
    probed (row, time) pairs that may explode before ``GuidedDiffusionModel.check_guidance`` refuses the
    guidance altogether (the model is then the source model exactly).

    Raises:
        ConfigError: ``max_ratio`` <= 0 or not finite, an unknown action, ``refuse_fraction`` outside [0, 1].
    """

    max_ratio: float = 10.0
    action: str = "clip"
    refuse_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not (isinstance(self.max_ratio, (int, float)) and 0 < float(self.max_ratio) < float("inf")):
            raise ConfigError(f"max_ratio must be a finite number > 0, got {self.max_ratio!r}")
        if self.action not in GUARD_ACTIONS:
            raise ConfigError(f"action must be one of {GUARD_ACTIONS}, got {self.action!r}")
        if not 0.0 <= float(self.refuse_fraction) <= 1.0:
            raise ConfigError(f"refuse_fraction must lie in [0, 1], got {self.refuse_fraction!r}")


@dataclass
class GuardCounts:
    """What a :class:`GuardedScore` saw: score calls, rows evaluated, exploding rows, the largest ratio."""

    calls: int = 0
    rows: int = 0
    exploded: int = 0
    max_ratio: float = 0.0

    @property
    def fraction(self) -> float:
        """Exploding rows / rows (0 before any call)."""
        return self.exploded / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "fraction": self.fraction}


def _norm(v: Tensor) -> Tensor:
    """Row norms (n,) of v (n, d) whose gradient is finite at a zero row (torch's norm gives NaN there)."""
    return (v.square().sum(-1) + torch.finfo(v.dtype).tiny).sqrt()


def guidance_ratio(source: Tensor, guidance: Tensor) -> Tensor:
    """|guidance| / max(|source|, SCORE_FLOOR) per row, (n,), for two (n, d) vectors."""
    ratio: Tensor = guidance.norm(dim=-1) / source.norm(dim=-1).clamp_min(SCORE_FLOOR)
    return ratio


class GuardedScore:
    """s_src + g with the limit applied row by row (module docstring); a ScoreFn ``(x (n, d), t, ctx) -> (n, d)``.

    Args:
        source_score: the frozen source score ``score(x, t, context)``.
        guidance: anything with ``log_h(x, t, context) -> (n,)``.
        limit: the :class:`GuidanceLimit`.
        split: when given, the context's first ``split`` columns go to the source score and the rest to the
            guidance (so the two can read different codes of the same condition); None: both get the context.

    Raises:
        DTypeError: a non-callable score or a guidance without ``log_h``.
        GuidanceExplosionError: at call time, with ``action="raise"``, when a row explodes.
    """

    def __init__(
        self, source_score: ScoreFn, guidance: Guidance, limit: GuidanceLimit | None = None, split: int | None = None
    ) -> None:
        check_score_and_guidance(source_score, guidance)
        self.source_score = source_score
        self.guidance = guidance
        self.limit = limit or GuidanceLimit()
        self.split = split
        self.counts = GuardCounts()

    def contexts(self, context: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
        """(the source score's context, the guidance's context) from the call's context."""
        if context is None or self.split is None:
            return context, context
        return context[:, : self.split], context[:, self.split :]

    def parts(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(s_src (n, d), g = grad log h (n, d)) at (x, t), unguarded."""
        check_tensor("x", x, ndim=2, min_rows=1)
        t = check_times("t", t, x)
        ctx_s, ctx_g = self.contexts(context)
        return self.source_score(x, t, ctx_s), guidance_grad(self.guidance, x, t, ctx_g)

    def __call__(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        s, g = self.parts(x, t, context)
        ratio = guidance_ratio(s.detach(), g.detach())
        bad = ratio > self.limit.max_ratio
        n_bad = int(bad.sum())
        c = self.counts
        c.calls, c.rows, c.exploded = c.calls + 1, c.rows + x.shape[0], c.exploded + n_bad
        c.max_ratio = max(c.max_ratio, float(ratio.max()))
        if n_bad == 0:
            return s + g
        if self.limit.action == "raise":
            raise GuidanceExplosionError(
                f"grad log h_t exceeded {self.limit.max_ratio} x |source score| on {n_bad} of {x.shape[0]} rows "
                f"(largest ratio {float(ratio.max()):.3g})"
            )
        if self.limit.action == "source":
            return s + g * (~bad).to(g.dtype)[:, None]
        # the scale only on exploding rows (|g| > 0 there): elsewhere a 1 / |g| with |g| ~ 0 would overflow in the
        # derivative that the likelihood's divergence takes, and 0 * inf is NaN even where the scale is unused
        one = torch.ones_like(ratio)
        denom = torch.where(bad, _norm(g), one)
        scale = torch.where(bad, self.limit.max_ratio * _norm(s).clamp_min(SCORE_FLOOR) / denom, one)
        return s + g * scale[:, None]


@dataclass(frozen=True)
class GuidanceProbe:
    """The ratio on probed rows: per time (``times``) its median and the exploding share, overall the share,
    the largest ratio and the limit used."""

    times: tuple[float, ...]
    median_ratio: tuple[float, ...]
    exploded_fraction: tuple[float, ...]
    fraction: float
    max_ratio: float
    limit: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_guidance(
    parts: Callable[[Tensor, Tensor, Tensor | None], tuple[Tensor, Tensor]],
    x0: Tensor,
    context: Tensor | None,
    schedule: VPSchedule,
    limit: GuidanceLimit,
    times: Sequence[float] = (0.01, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0),
    seed: int = 0,
) -> GuidanceProbe:
    """The ratio |g| / |s_src| at x_t = a_t x0 + s_t e for every row of x0 (n, d) and every t of ``times``.

    ``parts(x, t, context) -> (s_src, g)``, e.g. :meth:`GuardedScore.parts`; one seeded noise draw per row and
    time. The rows should be where the model will be used: target rows (the likelihood's data) or source rows.
    """
    check_tensor("x0", x0, ndim=2, min_rows=1)
    if not times or any(not 0.0 < float(t) <= 1.0 for t in times):
        raise ConfigError(f"times must be a non-empty list in (0, 1], got {list(times)}")
    gen = torch.Generator().manual_seed(seed)
    medians, shares, all_ratios = [], [], []
    for t in times:
        tt = torch.full((x0.shape[0],), float(t), dtype=x0.dtype, device=x0.device)
        eps = torch.randn(x0.shape, generator=gen, dtype=x0.dtype).to(x0.device)
        xt = schedule.alpha(tt)[:, None].to(x0) * x0 + schedule.sigma(tt)[:, None].to(x0) * eps
        with torch.no_grad():
            s, g = parts(xt, tt, context)
        r = guidance_ratio(s.detach(), g.detach()).double()
        medians.append(float(r.median()))
        shares.append(float((r > limit.max_ratio).double().mean()))
        all_ratios.append(r)
    r_all = torch.cat(all_ratios)
    return GuidanceProbe(
        times=tuple(float(t) for t in times),
        median_ratio=tuple(medians),
        exploded_fraction=tuple(shares),
        fraction=float((r_all > limit.max_ratio).double().mean()),
        max_ratio=float(r_all.max()),
        limit=float(limit.max_ratio),
    )
