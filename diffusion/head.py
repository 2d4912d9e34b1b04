"""The diffusion head: an epsilon network on (x_t, t, context) under the VP process, as a generative head.

- ``loss``: denoising score matching in epsilon form, L = E_{t ~ U(t_eps, 1), x_0, e} ||e_hat(x_t, t, c) - e||^2 / d,
  weight w(t) = 1 in epsilon form, i.e. lambda(t) = s_t^2 in score form (the "simple" loss of Ho et al. 2020:
  every noise level's target has unit variance, so the loss is well scaled at every t); t stratified over the
  batch (Kingma et al. 2021).
- ``score = -e_hat / s_t``, a plain score function ``score(x, t, context)`` for every sampler and likelihood.
- ``log_prob``: the probability-flow ODE (``diffusion.likelihood``), exact divergence up to 16 features and
  Hutchinson beyond (``divergence="auto"``), adaptive dopri5 at rtol = atol = 1e-5 by default.
- ``sample``: the probability-flow ODE by default, so that samples come from exactly the density that
  ``log_prob`` reports (the KL the experiments measure); ``sampler="heun"`` or ``"euler_maruyama"`` gives the
  reverse SDE instead (the model the Girsanov bound covers).
- ``head(context)``: a ``torch.distributions.Distribution`` (sample through the sampler, log_prob through the
  probability flow), with torch's batching rules.

Inference settings are chosen at call time, like diffusers' ``num_inference_steps=``, and are not part of
the weights: ``head.sample(n, c, sampler="heun", steps=200)``, ``head.log_prob(x, c, divergence="hutchinson",
probes=4)``, ``head(c, sampler="heun")``. The constructor's ``sampler``, ``sample_steps``, ``divergence``,
``probes``, ``rtol`` and ``atol`` are only the defaults of those calls: they are not in ``config``, so weights
saved under one sampler load into a head built with any other.

EMA (``ema_decay``): an exponential moving average of the network's weights (``torch.optim.swa_utils``),
updated after every optimiser step of the shared loop and used by ``score``, ``sample`` and ``log_prob`` once
it holds an average (the loss trains the live weights); it is saved with the checkpoint.

Parameterisation (``parameterization``): ``"residual"`` (default) writes e_hat = s_t (x_t + F), i.e. the score
is -x_t - F: the network F learns the departure from the standard normal that standardised data start near,
and the score stays bounded as s_t -> 0, which keeps the probability-flow ODE smooth at t_eps (fewer solver
steps, steadier log-densities). ``"epsilon"`` is the plain e_hat = F (score -F / s_t). The residual form's
lower KL and fewer solver evaluations on the TGDP source mixture: docs/notes/2026-11-24-diffusion-head-design.md.

Example:
    >>> head = DiffusionHead(2, 3, width=32, blocks=2)
    >>> loss = head.loss(torch.randn(8, 2), torch.randn(8, 3))                  # scalar, to minimise
    >>> x = head.sample(5, torch.randn(3), sampler="heun", steps=50)            # (5, 2)

References:
    J. Ho, A. Jain, P. Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020,
    https://arxiv.org/abs/2006.11239.
    D. P. Kingma, T. Salimans, B. Poole, J. Ho, "Variational Diffusion Models", NeurIPS 2021,
    https://arxiv.org/abs/2107.00630.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from shared_embed.head import Head, register_head
from shared_embed.rng import check_generator
from shared_embed.validation import check_choice, check_fraction, check_positive_float, check_positive_int

from .likelihood import DIVERGENCES, probability_flow_log_prob
from .network import ScoreNetwork
from .sampling import SDE_METHODS, check_times, sample_ode, sample_sde
from .schedule import SCHEDULES, VPSchedule, stratified_times

__all__ = ["EXACT_DIVERGENCE_MAX_FEATURES", "PARAMETERIZATIONS", "SAMPLERS", "DiffusionHead", "make_diffusion_head"]

SAMPLERS = ("ode", *SDE_METHODS)
PARAMETERIZATIONS = ("residual", "epsilon")
#: largest dimension for which ``divergence="auto"`` takes the exact divergence (d backward passes).
EXACT_DIVERGENCE_MAX_FEATURES = 16


@register_head("diffusion")
class DiffusionHead(Head):
    """p(x | context) as a VP diffusion model with a learned epsilon network.

    Args:
        features: d_x; context_features: d_h, or None for an unconditional head.
        width / blocks / time_features: the residual MLP (``diffusion.network.ScoreNetwork``).
        parameterization: ``"residual"`` or ``"epsilon"`` (module docstring).
        schedule / beta_min / beta_max: the :class:`VPSchedule`.
        t_eps: lower end of t in the loss, the likelihood and the samplers.
        ema_decay: None (no EMA) or the decay in (0, 1) of an EMA of the weights, e.g. 0.999.
        sampler / sample_steps / divergence / probes / rtol / atol: DEFAULTS of the call-time settings, not
            part of the weights: ``sampler`` ``"ode"``, ``"heun"`` or ``"euler_maruyama"`` and ``sample_steps``
            (SDE samplers) for ``sample(..., sampler=, steps=)``; ``divergence`` ``"auto"``, ``"exact"`` or
            ``"hutchinson"`` (``probes`` Rademacher vectors, seed 0) for ``log_prob(..., divergence=, probes=)``;
            ``rtol`` / ``atol``, the adaptive ODE solves' tolerances, for both.

    Example:
        >>> head = DiffusionHead(2, 3, width=32, blocks=2)
        >>> head.loss(torch.randn(8, 2), torch.randn(8, 3)).shape
        torch.Size([])
        >>> head.log_prob(torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5])
        >>> head(torch.randn(5, 3), sampler="heun", steps=50).sample((2,)).shape
        torch.Size([2, 5, 2])
    """

    SAMPLE_OPTIONS = ("sampler", "steps", "rtol", "atol")
    LOG_PROB_OPTIONS = ("divergence", "probes", "rtol", "atol")

    def __init__(
        self,
        features: int,
        context_features: int | None = None,
        width: int = 128,
        blocks: int = 3,
        time_features: int = 32,
        parameterization: str = "residual",
        schedule: str = "linear",
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        t_eps: float = 1e-5,
        ema_decay: float | None = None,
        sampler: str = "ode",
        sample_steps: int = 500,
        divergence: str = "auto",
        probes: int = 1,
        rtol: float = 1e-5,
        atol: float = 1e-5,
    ) -> None:
        super().__init__(features, context_features)
        self.parameterization = check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        self.schedule = VPSchedule(check_choice("schedule", schedule, SCHEDULES), beta_min, beta_max)
        self.t_eps = check_fraction("t_eps", t_eps)
        self.sampler = check_choice("sampler", sampler, SAMPLERS)
        self.sample_steps = check_positive_int("sample_steps", sample_steps)
        self.divergence = check_choice("divergence", divergence, ("auto", *DIVERGENCES))
        self.probes = check_positive_int("probes", probes)
        self.rtol = check_positive_float("rtol", rtol)
        self.atol = check_positive_float("atol", atol)
        self.net = ScoreNetwork(features, context_features, width, blocks, time_features)
        self._arch = {"width": width, "blocks": blocks, "time_features": time_features}
        self.ema_decay = None if ema_decay is None else check_fraction("ema_decay", ema_decay)
        self.ema: AveragedModel | None = None
        if self.ema_decay is not None:
            self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(self.ema_decay), use_buffers=True)
            self.ema.requires_grad_(False)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "context_features": self.context_features,
            **self._arch,
            "parameterization": self.parameterization,
            "schedule": self.schedule.kind,
            "beta_min": self.schedule.beta_min,
            "beta_max": self.schedule.beta_max,
            "t_eps": self.t_eps,
            "ema_decay": self.ema_decay,
        }

    @property
    def inference(self) -> dict[str, Any]:
        """The current defaults of the call-time settings (not saved with the weights)."""
        return {
            "sampler": self.sampler,
            "steps": self.sample_steps,
            "divergence": self.divergence,
            "probes": self.probes,
            "rtol": self.rtol,
            "atol": self.atol,
        }

    def resolve_divergence(self, divergence: str = "auto") -> str:
        """``"exact"`` or ``"hutchinson"``; ``"auto"``: exact up to 16 features, Hutchinson beyond."""
        divergence = check_choice("divergence", divergence, ("auto", *DIVERGENCES))
        if divergence != "auto":
            return divergence
        return "exact" if self.features <= EXACT_DIVERGENCE_MAX_FEATURES else "hutchinson"

    @property
    def divergence_method(self) -> str:
        """The divergence ``log_prob`` uses by default: ``divergence``, with ``"auto"`` resolved by the dimension."""
        return self.resolve_divergence(self.divergence)

    # -- EMA ------------------------------------------------------------------------------------------
    def after_optimizer_step(self) -> None:
        """Called by the shared loop after each optimiser step: update the EMA while the network trains."""
        if self.ema is not None and any(p.requires_grad for p in self.net.parameters()):
            self.ema.update_parameters(self.net)

    @property
    def inference_net(self) -> nn.Module:
        """The network that scores, samples and likelihoods use: the EMA once it holds an average, else the live one."""
        if self.ema is not None and int(self.ema.n_averaged) > 0:
            return self.ema.module
        return self.net

    # -- the network in its three readings ---------------------------------------------------------
    def _scales(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """a_t, s_t and the network's noise level log(s_t / a_t), each (n,)."""
        log_a, log_s = self.schedule.log_scales(t)  # t's dtype and device
        return log_a.exp(), log_s.exp(), log_s - log_a

    def _epsilon(
        self,
        x: Tensor,
        t: Tensor,
        context: Tensor | None,
        scales: tuple[Tensor, Tensor, Tensor] | None = None,
        net: nn.Module | None = None,
    ) -> tuple[Tensor, Tensor]:
        """(e_hat, s_t[:, None]) without argument checks; t is (n,); ``scales``: ``_scales(t)`` if already known;
        ``net``: the network (default: the live one, which the loss trains)."""
        _, s, level = self._scales(t) if scales is None else scales
        out = (self.net if net is None else net)(x, level, context)
        s = s.unsqueeze(-1)
        return (s * (x + out) if self.parameterization == "residual" else out), s

    def _score(self, x: Tensor, t: Tensor, context: Tensor | None) -> Tensor:
        net = self.inference_net
        if self.parameterization == "residual":
            _, _, level = self._scales(t)
            score: Tensor = -x - net(x, level, context)
            return score
        eps, s = self._epsilon(x, t, context, net=net)
        return -eps / s

    def _check(self, x: Tensor, t: Tensor | float, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        x, context = self.check_inputs(x, context)
        return x, check_times("t", t, x), context

    def epsilon(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """e_hat(x_t, t, context): x (n, features), t a number or (n,) in (0, 1], context (n, k) or None -> (n, features).

        The inference network (the EMA when it holds an average), as for ``score``."""
        x, t, context = self._check(x, t, context)
        return self._epsilon(x, t, context, net=self.inference_net)[0]

    def score(self, x: Tensor, t: Tensor | float, context: Tensor | None = None) -> Tensor:
        """The model score grad_x log p_t = -e_hat / s_t, (n, features): a ScoreFn for the samplers."""
        x, t, context = self._check(x, t, context)
        return self._score(x, t, context)

    # -- the head contract -------------------------------------------------------------------------
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Denoising score matching (epsilon form, w(t) = 1, t ~ U(t_eps, 1)) averaged over rows and features.

        x (n, features), context (n, context_features) or None -> a scalar. The batch's t are stratified (one
        per interval of length 1/n, in random order: the low-discrepancy sampler of Kingma et al. 2021, module
        docstring): each t is still U(t_eps, 1), so the loss is unchanged in expectation, and its batch-to-batch
        variance is lower, which steadies training and the early-stopping validation loss.

        Raises:
            ShapeError, DTypeError, DataError: x or the context of the wrong shape, dtype, device or not finite.
        """
        x, context = self.check_inputs(x, context)
        t = stratified_times(x.shape[0], self.t_eps, x)
        # the hot path of training: the schedule once per batch, each scale broadcast once, no helper calls
        log_a, log_s = self.schedule.log_scales(t)
        a, s = log_a.exp().unsqueeze(-1), log_s.exp().unsqueeze(-1)
        noise = torch.randn_like(x)
        x_t = a * x + s * noise
        out = self.net(x_t, log_s - log_a, context)
        eps = s * (x_t + out) if self.parameterization == "residual" else out
        loss: Tensor = (eps - noise).square().mean()
        return loss

    def log_prob(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        divergence: str | None = None,
        probes: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> Tensor:
        """log p_hat(x | context), (n,), through the probability-flow ODE; differentiable when grad is on.

        Call-time settings (None: the head's defaults, ``head.inference``): ``divergence`` (``"auto"``,
        ``"exact"``, ``"hutchinson"``), ``probes`` (Hutchinson vectors), ``rtol`` / ``atol`` of the solve.
        """
        x, context = self.check_inputs(x, context)
        return probability_flow_log_prob(
            self._score,
            x,
            self.schedule,
            context=context,
            divergence=self.resolve_divergence(self.divergence if divergence is None else divergence),
            probes=check_positive_int("probes", self.probes if probes is None else probes),
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            t_eps=self.t_eps,
        )

    def sample(
        self,
        n: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
    ) -> Tensor:
        """(n, features) draws from x_1 ~ N(0, I); context None, (k,) shared or (n, k).

        Call-time settings (None: the head's defaults, ``head.inference``): ``sampler`` (``"ode"``, ``"heun"``,
        ``"euler_maruyama"``), ``steps`` of the SDE samplers, ``rtol`` / ``atol`` of the ODE sampler;
        ``generator`` seeds x_1 and the SDE noise.
        """
        context = self.sample_context(n, context)
        sampler = check_choice("sampler", self.sampler if sampler is None else sampler, SAMPLERS)
        steps = check_positive_int("steps", self.sample_steps if steps is None else steps)
        like = next(iter(self.parameters()))
        with torch.no_grad():
            x1 = torch.randn(
                n, self.features, generator=check_generator(generator), dtype=like.dtype, device=like.device
            )
            if sampler == "ode":
                return sample_ode(
                    self._score,
                    x1,
                    self.schedule,
                    context=context,
                    rtol=self.rtol if rtol is None else rtol,
                    atol=self.atol if atol is None else atol,
                    t_eps=self.t_eps,
                )
            return sample_sde(
                self._score,
                x1,
                self.schedule,
                context=context,
                steps=steps,
                method=sampler,
                t_eps=self.t_eps,
                generator=generator,
            )


def make_diffusion_head(features: int, **kwargs: Any) -> Callable[[int | None], DiffusionHead]:
    """A head factory for ``shared_embed.transfer``: ``factory(context_features)`` builds a new DiffusionHead.

    The arguments are checked now (a bad option fails here, not mid-sweep).

    Example:
        >>> factory = make_diffusion_head(2, width=64, blocks=2)
        >>> factory(2).config["width"]
        64
    """
    DiffusionHead(features, None, **kwargs)

    def factory(context_features: int | None) -> DiffusionHead:
        return DiffusionHead(features, context_features, **kwargs)

    factory.config = {"kind": DiffusionHead.kind, "features": features, **kwargs}  # type: ignore[attr-defined]
    return factory
