"""TGDP's target model as a model: a frozen source diffusion model plus a guidance, with ``log_prob`` / ``sample``.

The source is a :class:`~shared_embed.model.ConditionalModel` whose head is a
:class:`~diffusion.head.DiffusionHead`: it standardises x with its scaler, embeds the condition c with its frozen
encoder into the head's context, and its score s_src(x_s, t, h(c)) lives in that standardised space. The guidance
(any ``log_h(x, t, context)``: a trained :class:`~diffusion.tgdp.guidance.GuidanceNetwork`, a
:class:`~diffusion.tgdp.kernel_guidance.KernelGuidance`, ...) lives in the same standardised space and reads
``guidance_context(c)`` (default: the same embedding h(c); a kernel guidance over labelled rows reads the label).

:class:`GuidedDiffusionModel` composes s_src + grad log h_t under a :class:`~diffusion.tgdp.guard.GuidanceLimit`
(:class:`~diffusion.tgdp.guard.GuardedScore`) and reads it as a model of x given c:

- ``log_prob(x (n, d), c (n, d_c)) -> (n,)``: the probability-flow likelihood with the source head's divergence,
  probes, tolerances and t_eps, plus the scaler's log-Jacobian (nats, in the units of x);
- ``sample(n, c) -> (n, d)``: the probability-flow ODE sampler with the head's tolerances;
- below ``switch`` (a switch time in [0, 1), see :mod:`diffusion.tgdp.switch_time`) the source score alone.

It does not collapse silently. Before anything is scored: a failed premise (a
:class:`~diffusion.tgdp.premise.PremiseReport` given with ``premise``, its warning already emitted by
``check_premise``) refuses the guidance when ``refuse_on_premise`` is on, and :meth:`check_guidance` probes the
guidance on noised rows and refuses it when more than ``limit.refuse_fraction`` of them explode (a
:class:`~shared_embed.errors.GuidanceWarning` says so). A refused model is the source model exactly. During a
solve the guard clips (or drops) exploding rows and counts them. :attr:`status` says which of these happened:
``"guided"``, ``"clipped"`` (some rows clipped), ``"switched"`` (a switch time > 0, no clipping) or
``"refused"`` with its reason.

Example:
    >>> fitted = fit_tgdp(source_model.head.score, xs, xt, source_context=hs, target_context=ht)
    >>> model = GuidedDiffusionModel(source_model, fitted.guidance, premise=fitted.premise)
    >>> model.check_guidance(target_x, target_c)
    >>> model.log_prob(test_x, test_c).shape, model.sample(10, test_c[:10]).shape
    (torch.Size([n]), torch.Size([10, d]))
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from shared_embed.errors import ConfigError, GuidanceWarning
from shared_embed.model import ConditionalModel
from shared_embed.validation import check_fraction, check_positive_int, check_tensor

from ..head import DiffusionHead
from ..likelihood import probability_flow_log_prob
from ..sampling import sample_ode
from .guard import GuardedScore, GuidanceLimit, GuidanceProbe, probe_guidance
from .guidance import Guidance
from .noisy_guidance import SwitchedScore
from .premise import PremiseReport

__all__ = ["STATUSES", "GuidedDiffusionModel"]

STATUSES = ("guided", "clipped", "switched", "refused")
ContextFn = Callable[[Tensor], Tensor]


class GuidedDiffusionModel:
    """A frozen conditional diffusion source model plus a guidance, as a model of x given c (module docstring).

    Args:
        source: a fitted :class:`ConditionalModel` with a :class:`DiffusionHead` (conditional: it has a context).
        guidance: ``log_h(x_s, t, context) -> (n,)`` in the source's standardised space, or None (the source
            model itself, status ``"refused"`` with reason "no guidance").
        guidance_context: c (n, d_c) -> the guidance's context (n, k); None: ``source.embed(c)``.
        limit: the :class:`GuidanceLimit` applied at every score call and by :meth:`check_guidance`.
        premise: the premise check of the fit, kept and reported; with ``refuse_on_premise`` a failed one refuses
            the guidance at construction.
        switch: switch time tau in [0, 1): the source score alone for t < tau (0: guided at every t).

    Raises:
        ConfigError: a source head that is not a DiffusionHead, an unconditional source, ``switch`` outside
            [0, 1).
    """

    def __init__(
        self,
        source: ConditionalModel,
        guidance: Guidance | None,
        *,
        guidance_context: ContextFn | None = None,
        limit: GuidanceLimit | None = None,
        premise: PremiseReport | None = None,
        refuse_on_premise: bool = True,
        switch: float = 0.0,
    ) -> None:
        if not isinstance(source.head, DiffusionHead):
            raise ConfigError(f"GuidedDiffusionModel needs a DiffusionHead source, got {type(source.head).__name__}")
        if not source.conditional:
            raise ConfigError("GuidedDiffusionModel needs a conditional source model (a head with a context)")
        self.source = source
        self.head: DiffusionHead = source.head
        self.guidance = guidance
        self.guidance_context = guidance_context
        self.limit = limit or GuidanceLimit()
        self.premise = premise
        if not 0.0 <= float(switch) < 1.0:
            raise ConfigError(f"switch must lie in [0, 1), got {switch!r}")
        self.switch = float(switch) if switch == 0 else check_fraction("switch", float(switch))
        self.switch_reason = ""
        self.probe: GuidanceProbe | None = None
        self.refused: str | None = None
        self._guarded: GuardedScore | None = None
        if guidance is None:
            self.refused = "no guidance"
        elif premise is not None and not premise.ok and refuse_on_premise:
            self.refused = "premise failed: " + "; ".join(premise.failures)
        else:
            self._guarded = GuardedScore(self.head.score, guidance, self.limit, split=self._score_width())

    # -- contexts and the score ----------------------------------------------------------------------
    def _score_width(self) -> int:
        width = self.head.context_features
        if width is None:  # guarded in __init__
            raise ConfigError("the source head has no context")
        return int(width)

    def context(self, c: Tensor) -> Tensor:
        """The ODE's context for conditions c (n, d_c): [h(c), guidance_context(c)] (n, d_h + k), or h(c) when
        the guidance is refused."""
        h = self.source.embed(c)
        if h is None:  # unconditional sources are refused in __init__
            raise ConfigError("the source model returned no embedding")
        if self._guarded is None:
            return h
        g = h if self.guidance_context is None else self.guidance_context(c).to(h)
        check_tensor("guidance_context(c)", g, ndim=2, rows=h.shape[0])
        return torch.cat([h, g], dim=1)

    def score(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """The composed score in standardised units, (n, d), with ``context`` from :meth:`context`: a ScoreFn."""
        if self._guarded is None:
            return self.head.score(x, t, context)
        if self.switch > 0:
            low = lambda x_, t_, ctx: self.head.score(x_, t_, None if ctx is None else ctx[:, : self._score_width()])  # noqa: E731
            return SwitchedScore(self._guarded, low, self.switch)(x, t, context)
        return self._guarded(x, t, context)

    def log_ratio(self, x: Tensor, c: Tensor) -> Tensor:
        """log w(x | c) (n,) up to a constant per condition, for x (n, d) and c (n, d_c) in raw units: the
        guidance's log h_t at the head's t_eps, where h_t -> w as t -> 0. Zeros when the guidance is refused (the
        model is the source model: w = 1). Use :func:`~diffusion.tgdp.gain_prediction.predict_gain` to turn it
        into the likelihood gain the composed model should show."""
        check_tensor("x", x, ndim=2, last_dim=self.head.features, min_rows=1)
        check_tensor("c", c, ndim=2, rows=x.shape[0])
        if self._guarded is None or self.guidance is None:
            return torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        with torch.no_grad():
            xs = self.source.x_scaler(x)
            ctx = self.context(c)[:, self._score_width() :]
            t = torch.full((x.shape[0],), self.head.t_eps, dtype=xs.dtype, device=xs.device)
            return self.guidance.log_h(xs, t, ctx)

    # -- the checks ----------------------------------------------------------------------------------
    def check_guidance(
        self, x: Tensor, c: Tensor, times: Sequence[float] = (0.01, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0), seed: int = 0
    ) -> GuidanceProbe | None:
        """Probe |grad log h_t| / |s_src| at noised x (n, d) with conditions c (n, d_c) (raw units); refuse the
        guidance (with a GuidanceWarning) when more than ``limit.refuse_fraction`` of the (row, t) pairs exceed
        ``limit.max_ratio``. Returns the probe (None when the guidance is already refused)."""
        if self._guarded is None:
            return None
        check_tensor("x", x, ndim=2, min_rows=1)
        with torch.no_grad():
            xs, ctx = self.source.x_scaler(x), self.context(c)
        self.probe = probe_guidance(self._guarded.parts, xs, ctx, self.head.schedule, self.limit, times, seed)
        if self.probe.fraction > self.limit.refuse_fraction:
            self.refused = (
                f"guidance explodes: |grad log h_t| > {self.limit.max_ratio} x |source score| on "
                f"{self.probe.fraction:.1%} of probed rows (limit {self.limit.refuse_fraction:.1%}; largest ratio "
                f"{self.probe.max_ratio:.3g})"
            )
            self._guarded = None
            warnings.warn(
                f"TGDP guidance refused, the source model is used instead: {self.refused}",
                GuidanceWarning,
                stacklevel=2,
            )
        return self.probe

    def choose_switch(self, switch: float, why: str = "") -> None:
        """Set the switch time tau in [0, 1] (``why`` goes into the report); tau >= 1 (the source score at every
        t) refuses the guidance."""
        tau = float(switch)
        if not 0.0 <= tau <= 1.0:
            raise ConfigError(f"switch must lie in [0, 1], got {switch!r}")
        self.switch_reason = why
        if tau >= 1.0:
            self.refused = f"switch time 1 (the source score alone is better){': ' + why if why else ''}"
            self._guarded = None
            self.switch = 0.0
            return
        self.switch = tau

    @property
    def status(self) -> str:
        """One of ``STATUSES`` (module docstring)."""
        if self._guarded is None:
            return "refused"
        if self._guarded.counts.exploded > 0:
            return "clipped"
        return "switched" if self.switch > 0 else "guided"

    def report(self) -> dict[str, Any]:
        """status, refusal reason, limit, switch, the guard's counts, the probe and the premise, JSON-ready."""
        return {
            "status": self.status,
            "refused": self.refused,
            "limit": {
                "max_ratio": self.limit.max_ratio,
                "action": self.limit.action,
                "refuse_fraction": self.limit.refuse_fraction,
            },
            "switch": self.switch,
            "switch_reason": self.switch_reason,
            "guard": None if self._guarded is None else self._guarded.counts.to_dict(),
            "probe": None if self.probe is None else self.probe.to_dict(),
            "premise": None if self.premise is None else self.premise.to_dict(),
        }

    # -- the model -----------------------------------------------------------------------------------
    def eval(self) -> GuidedDiffusionModel:
        """Evaluation mode for the source model and a guidance that is an nn.Module."""
        self.source.eval()
        if isinstance(self.guidance, torch.nn.Module):
            self.guidance.eval()
        return self

    def log_prob(self, x: Tensor, c: Tensor) -> Tensor:
        """log p(x | c) (n,) in nats for x (n, d) and c (n, d_c), through the probability-flow ODE."""
        check_tensor("x", x, ndim=2, last_dim=self.head.features, min_rows=1)
        check_tensor("c", c, ndim=2, rows=x.shape[0])
        h = self.head
        lp = probability_flow_log_prob(
            self.score,
            self.source.x_scaler(x),
            h.schedule,
            context=self.context(c),
            divergence=h.resolve_divergence(h.divergence),
            probes=h.probes,
            rtol=h.rtol,
            atol=h.atol,
            t_eps=h.t_eps,
        )
        return lp + self.source.x_scaler.log_abs_det()

    def sample(self, n: int, c: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """n draws (n, d) for conditions c (n, d_c), by the probability-flow ODE from seeded x_1 ~ N(0, I)."""
        check_positive_int("n", n)
        check_tensor("c", c, ndim=2, rows=n)
        h = self.head
        ctx = self.context(c)
        x1 = torch.randn(n, h.features, generator=generator, dtype=ctx.dtype).to(ctx.device)
        with torch.no_grad():
            x0 = sample_ode(self.score, x1, h.schedule, context=ctx, rtol=h.rtol, atol=h.atol, t_eps=h.t_eps)
        return self.source.x_scaler.inverse(x0)
