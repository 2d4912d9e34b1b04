"""Flow builders for the zuko and nflows libraries behind one registry.

Every builder takes a :class:`FlowSpec` and returns a :class:`FlowModule`, a small adapter with one
interface whatever the library underneath:

- ``log_prob(x, context) -> (n,)`` for x (n, features) and context (n, context_features) or None;
- ``rsample(n, context) -> (n, features)``, one draw per context row, differentiable in the parameters.

Backends and transforms (``TRANSFORMS`` lists them):

- ``zuko`` (default): ``nsf`` (autoregressive rational-quadratic splines), ``nsf_coupling`` (the same
  with coupling layers, ``passes=2``: sampling in one pass instead of ``features``), ``maf`` (affine
  autoregressive), ``realnvp`` (affine coupling), ``cnf`` (continuous flow, FFJORD with the exact
  divergence; ``transforms`` stacked ODE blocks).
- ``nflows``: ``spline_ar`` (rational-quadratic autoregressive), ``affine_ar`` (MAF) and
  ``spline_coupling``; layers are separated by ``ReversePermutation`` (nflows' ``NaiveLinear`` calls
  ``torch.solve``, which current torch no longer has, so it is not used).

Splines act on [-tail_bound, tail_bound] and are the identity outside (zuko's own behaviour; nflows
with ``tails="linear"``). Heads see standardised data (``ConditionalModel`` standardises), so the
default bound 5 covers all but a vanishing fraction of the inputs and the tails stay exact densities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import zuko
from nflows.distributions.normal import StandardNormal
from nflows.flows.base import Flow as NflowsFlowModel
from nflows.nn.nets import ResidualNet
from nflows.transforms.autoregressive import (
    MaskedAffineAutoregressiveTransform,
    MaskedPiecewiseRationalQuadraticAutoregressiveTransform,
)
from nflows.transforms.base import CompositeTransform
from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform
from nflows.transforms.permutations import ReversePermutation
from torch import Tensor, nn
from zuko.transforms import MonotonicRQSTransform

from shared_embed.errors import ConfigError
from shared_embed.mlp import ACTIVATIONS
from shared_embed.rng import global_rng_from
from shared_embed.validation import check_choice

__all__ = [
    "BACKENDS",
    "DEFAULT_TRANSFORM",
    "SPLINE_TRANSFORMS",
    "TRANSFORMS",
    "Builder",
    "FlowModule",
    "FlowSpec",
    "NflowsFlow",
    "ZukoFlow",
    "build_flow",
    "check_backend",
]


@dataclass(frozen=True)
class FlowSpec:
    """What every builder needs.

    Attributes:
        features: d, the dimension of x.
        context_features: k, the dimension of the context, or None (unconditional).
        transforms: number of flow layers (ODE blocks for ``cnf``).
        hidden: widths of the hidden layers of each layer's network.
        bins: spline bins (spline transforms only).
        tail_bound: splines act on [-tail_bound, tail_bound], identity outside.
        activation: a name of ``shared_embed.mlp.ACTIVATIONS``.
    """

    features: int
    context_features: int | None
    transforms: int
    hidden: tuple[int, ...]
    bins: int
    tail_bound: float
    activation: str


class FlowModule(nn.Module, ABC):
    """A built flow with the library hidden: ``log_prob`` and ``rsample`` (see the module docstring)."""

    def __init__(self, spec: FlowSpec) -> None:
        super().__init__()
        self.spec = spec

    @abstractmethod
    def log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        """log-density (n,) of x (n, features) given context (n, k) or None."""

    @abstractmethod
    def rsample(
        self, n: int, context: Tensor | None, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        """(n, features) reparameterised draws; context is (n, k) or None; ``generator`` seeds them.

        ``temperature`` scales the standard normal base noise before the inverse transform (1: the flow's own
        distribution, unchanged; below 1: draws nearer the flow's mode).
        """


class ZukoFlow(FlowModule):
    """Adapter for a zuko lazy flow: ``flow(context)`` is a ``torch.distributions`` object."""

    def __init__(self, flow: zuko.lazy.Flow, spec: FlowSpec) -> None:
        super().__init__(spec)
        self.flow = flow

    def log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        log_p: Tensor = self.flow(context).log_prob(x)
        return log_p

    def rsample(
        self, n: int, context: Tensor | None, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        dist = self.flow(context)
        like = next(self.flow.parameters(), None)
        with global_rng_from(
            generator, torch.device("cpu") if like is None else like.device
        ):  # zuko takes no generator
            draws: Tensor
            if temperature == 1.0:
                draws = dist.rsample((n,)) if context is None else dist.rsample()
                return draws
            z = dist.base.rsample((n,) if context is None else ())  # every builder's base is a standard normal
            draws = dist.transform.inv(z * temperature)
            return draws


class NflowsFlow(FlowModule):
    """Adapter for an ``nflows.flows.Flow`` with a standard normal base: one draw per context row."""

    def __init__(self, flow: NflowsFlowModel, spec: FlowSpec) -> None:
        super().__init__(spec)
        self.flow = flow

    def log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        log_p: Tensor = self.flow.log_prob(x, context=context)
        return log_p

    def rsample(
        self, n: int, context: Tensor | None, generator: torch.Generator | None = None, temperature: float = 1.0
    ) -> Tensor:
        # nflows' StandardNormal draws float32 noise whatever the flow's dtype, so draw it here in the
        # parameters' dtype and push it through the inverse transform (what ``Flow.sample`` does).
        ref = next(self.flow.parameters())
        noise = torch.randn(n, self.spec.features, generator=generator, dtype=ref.dtype, device=ref.device)
        if temperature != 1.0:
            noise = noise * temperature
        x: Tensor
        x, _ = self.flow._transform.inverse(noise, context=context)
        return x


# -- zuko ------------------------------------------------------------------------------------------
def _zuko_kwargs(spec: FlowSpec) -> dict[str, Any]:
    return {"hidden_features": spec.hidden, "activation": ACTIVATIONS[spec.activation]}


def _zuko_spline(spec: FlowSpec, passes: int | None) -> FlowModule:
    univariate = partial(MonotonicRQSTransform, bound=spec.tail_bound, slope=1e-3)
    shapes = [(spec.bins,), (spec.bins,), (spec.bins - 1,)]
    flow = zuko.flows.MAF(
        spec.features,
        spec.context_features or 0,
        spec.transforms,
        passes=passes,
        univariate=univariate,
        shapes=shapes,
        **_zuko_kwargs(spec),
    )
    return ZukoFlow(flow, spec)


def _zuko_nsf(spec: FlowSpec) -> FlowModule:
    return _zuko_spline(spec, None)


def _zuko_nsf_coupling(spec: FlowSpec) -> FlowModule:
    _need_two_features(spec, "nsf_coupling")
    return _zuko_spline(spec, 2)


def _zuko_maf(spec: FlowSpec) -> FlowModule:
    flow = zuko.flows.MAF(spec.features, spec.context_features or 0, spec.transforms, **_zuko_kwargs(spec))
    return ZukoFlow(flow, spec)


def _zuko_realnvp(spec: FlowSpec) -> FlowModule:
    _need_two_features(spec, "realnvp")
    flow = zuko.flows.RealNVP(spec.features, spec.context_features or 0, spec.transforms, **_zuko_kwargs(spec))
    return ZukoFlow(flow, spec)


def _zuko_cnf(spec: FlowSpec) -> FlowModule:
    blocks = [
        zuko.flows.FFJTransform(spec.features, spec.context_features or 0, exact=True, **_zuko_kwargs(spec))
        for _ in range(spec.transforms)
    ]
    base = zuko.flows.UnconditionalDistribution(
        zuko.distributions.DiagNormal, torch.zeros(spec.features), torch.ones(spec.features), buffer=True
    )
    return ZukoFlow(zuko.flows.Flow(blocks, base), spec)


# -- nflows ----------------------------------------------------------------------------------------
def _nflows_made_kwargs(spec: FlowSpec) -> dict[str, Any]:
    if len(set(spec.hidden)) != 1:
        raise ConfigError(
            f"the nflows backend uses one hidden width (MADE / residual blocks), got hidden={list(spec.hidden)}; "
            "give equal widths, e.g. (64, 64)"
        )
    return {
        "hidden_features": spec.hidden[0],
        "num_blocks": len(spec.hidden),
        "use_residual_blocks": True,
        "activation": ACTIVATIONS[spec.activation](),
    }


def _nflows_stack(layers: list[nn.Module], spec: FlowSpec) -> FlowModule:
    parts: list[nn.Module] = []
    for i, layer in enumerate(layers):
        if i:
            parts.append(ReversePermutation(spec.features))
        parts.append(layer)
    flow = NflowsFlowModel(CompositeTransform(parts), StandardNormal([spec.features]))
    return NflowsFlow(flow, spec)


def _nflows_spline_ar(spec: FlowSpec) -> FlowModule:
    layers = [
        MaskedPiecewiseRationalQuadraticAutoregressiveTransform(
            spec.features,
            context_features=spec.context_features,
            num_bins=spec.bins,
            tails="linear",
            tail_bound=spec.tail_bound,
            **_nflows_made_kwargs(spec),
        )
        for _ in range(spec.transforms)
    ]
    return _nflows_stack(layers, spec)


def _nflows_affine_ar(spec: FlowSpec) -> FlowModule:
    layers = [
        MaskedAffineAutoregressiveTransform(
            spec.features, context_features=spec.context_features, **_nflows_made_kwargs(spec)
        )
        for _ in range(spec.transforms)
    ]
    return _nflows_stack(layers, spec)


def _nflows_spline_coupling(spec: FlowSpec) -> FlowModule:
    _need_two_features(spec, "spline_coupling")
    made = _nflows_made_kwargs(spec)

    def net(in_features: int, out_features: int) -> nn.Module:
        residual: nn.Module = ResidualNet(
            in_features,
            out_features,
            made["hidden_features"],
            spec.context_features,
            num_blocks=made["num_blocks"],
            activation=made["activation"],
        )
        return residual

    layers = []
    for i in range(spec.transforms):
        mask = (torch.arange(spec.features) % 2 == i % 2).to(torch.int64) * 2 - 1  # +1 transformed, -1 kept
        layers.append(
            PiecewiseRationalQuadraticCouplingTransform(
                mask, net, num_bins=spec.bins, tails="linear", tail_bound=spec.tail_bound
            )
        )
    return _nflows_stack(layers, spec)


def _need_two_features(spec: FlowSpec, name: str) -> None:
    if spec.features < 2:
        raise ConfigError(f"transform {name!r} is a coupling flow and needs features >= 2, got {spec.features}")


Builder = Callable[[FlowSpec], FlowModule]

#: backend name -> transform name -> builder.
BACKENDS: dict[str, dict[str, Builder]] = {
    "zuko": {
        "nsf": _zuko_nsf,
        "nsf_coupling": _zuko_nsf_coupling,
        "maf": _zuko_maf,
        "realnvp": _zuko_realnvp,
        "cnf": _zuko_cnf,
    },
    "nflows": {
        "spline_ar": _nflows_spline_ar,
        "affine_ar": _nflows_affine_ar,
        "spline_coupling": _nflows_spline_coupling,
    },
}

#: backend name -> the transform names it offers.
TRANSFORMS: dict[str, tuple[str, ...]] = {backend: tuple(t) for backend, t in BACKENDS.items()}

#: backend name -> the transform a FlowHead gets when none is named.
DEFAULT_TRANSFORM: dict[str, str] = {"zuko": "nsf", "nflows": "spline_ar"}

#: transforms built from splines (they use ``bins`` and ``tail_bound``).
SPLINE_TRANSFORMS = frozenset({"nsf", "nsf_coupling", "spline_ar", "spline_coupling"})


def check_backend(backend: str, transform: str | None) -> tuple[str, str]:
    """Check a (backend, transform) pair (None: the backend's default); the ConfigError lists the valid names."""
    check_choice("flow backend", backend, BACKENDS)
    if transform is None:
        transform = DEFAULT_TRANSFORM[backend]
    if transform not in BACKENDS[backend]:
        valid = ", ".join(repr(t) for t in TRANSFORMS[backend])
        raise ConfigError(f"unknown transform {transform!r} for flow backend {backend!r}; valid choices: {valid}")
    return backend, transform


def build_flow(backend: str, transform: str, spec: FlowSpec) -> FlowModule:
    """Build the flow ``transform`` of ``backend`` for ``spec``."""
    check_backend(backend, transform)
    check_choice("activation", spec.activation, ACTIVATIONS)
    return BACKENDS[backend][transform](spec)
