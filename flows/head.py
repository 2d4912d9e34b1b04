"""The conditional flow head: a normalizing flow over x (n, features) given the frozen embedding h(c)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from shared_embed.distribution import BatchedConditional
from shared_embed.errors import DataError
from shared_embed.head import Head, register_head
from shared_embed.rng import check_generator
from shared_embed.validation import check_positive_float, check_positive_int

from .backends import SPLINE_TRANSFORMS, FlowModule, FlowSpec, build_flow, check_backend

__all__ = ["DEFAULT_CNF_BLOCKS", "DEFAULT_TRANSFORMS", "FlowDistribution", "FlowHead", "make_flow_head"]

#: transforms per backend when ``transforms`` is not given: 3 layers, one ODE block for ``cnf``.
DEFAULT_TRANSFORMS = 3
DEFAULT_CNF_BLOCKS = 1


@register_head("flow")
class FlowHead(Head):
    """p(x | context) as a normalizing flow from the zuko (default) or nflows library.

    The loss is the mean negative log-likelihood, so the shared training loop trains it; ``log_prob``
    is the exact log-density; ``sample`` and ``rsample`` draw one x per context row (``generator=`` for
    reproducible draws). Calling the head on a context returns a ``torch.distributions.Distribution``, as a
    zuko conditional flow does.

    Args:
        features: d_x.
        context_features: d_h, or None for an unconditional flow.
        backend: ``"zuko"`` or ``"nflows"``; transform: see ``flows.backends.TRANSFORMS`` (None: the backend's
            default, ``DEFAULT_TRANSFORM``: ``nsf`` for zuko, ``spline_ar`` for nflows).
        transforms: number of layers (None: 3, or 1 ODE block for ``cnf``).
        hidden: hidden widths of each layer's network (nflows: equal widths).
        bins / tail_bound: spline bins and the half-width of the spline interval (spline transforms).
        activation: a name of ``shared_embed.mlp.ACTIVATIONS``.

    Sampling takes one call-time option, ``temperature`` (> 0, default 1): the standard normal base noise is
    multiplied by it before the inverse transform. 1 draws from the flow's own density (what ``log_prob``
    scores); below 1 the draws concentrate near the flow's high-density region (sharper, less diverse samples
    from a distribution that is no longer the fitted one: report it as such).

    Example:
        >>> head = FlowHead(2, 3, backend="zuko", transform="nsf")
        >>> head.log_prob(torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5])
        >>> head(torch.randn(5, 3)).sample().shape
        torch.Size([5, 2])
    """

    has_rsample = True
    SAMPLE_OPTIONS = ("temperature",)

    def __init__(
        self,
        features: int,
        context_features: int | None = None,
        backend: str = "zuko",
        transform: str | None = None,
        transforms: int | None = None,
        hidden: Sequence[int] = (64, 64),
        bins: int = 8,
        tail_bound: float = 5.0,
        activation: str = "silu",
    ) -> None:
        super().__init__(features, context_features)
        self.backend, self.transform = check_backend(backend, transform)
        transform = self.transform
        if transforms is None:
            transforms = DEFAULT_CNF_BLOCKS if transform == "cnf" else DEFAULT_TRANSFORMS
        check_positive_int("transforms", transforms)
        hidden = tuple(hidden)
        if not hidden:
            raise DataError("hidden must list at least one hidden width, got ()")
        for i, h in enumerate(hidden):
            check_positive_int(f"hidden[{i}]", h)
        check_positive_int("bins", bins, minimum=2)
        spec = FlowSpec(
            features,
            context_features,
            transforms,
            hidden,
            bins,
            check_positive_float("tail_bound", tail_bound),
            activation,
        )
        self.spec = spec
        self.flow: FlowModule = build_flow(backend, transform, spec)

    @property
    def config(self) -> dict[str, Any]:
        s = self.spec
        return {
            "features": s.features,
            "context_features": s.context_features,
            "backend": self.backend,
            "transform": self.transform,
            "transforms": s.transforms,
            "hidden": list(s.hidden),
            "bins": s.bins,
            "tail_bound": s.tail_bound,
            "activation": s.activation,
        }

    @property
    def uses_splines(self) -> bool:
        return self.transform in SPLINE_TRANSFORMS

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density (n,) of x (n, features) given context (n, context_features) or None."""
        x, context = self.check_inputs(x, context)
        return self.flow.log_prob(x, context)

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood of the batch (nats)."""
        return -self.log_prob(x, context).mean()

    def rsample(
        self,
        n: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """(n, features) draws that carry gradients to the parameters; context None, (k,) or (n, k).

        ``generator`` makes the draws reproducible; ``temperature`` (> 0) scales the base noise (class
        docstring); a DataError names a temperature that is not a finite number > 0. zuko's ``cnf`` passes its parameters to the adjoint ODE
        solver in train mode only, so in eval mode its draws carry no parameter gradients (every other
        transform does in both modes).
        """
        temperature = check_positive_float("temperature", temperature)
        context = self.sample_context(n, context)
        return self.flow.rsample(n, context, check_generator(generator), temperature)

    def sample(
        self,
        n: int,
        context: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """(n, features) draws without gradients; context None, (k,) shared or (n, k) one per row;
        ``temperature`` as in :meth:`rsample`."""
        with torch.no_grad():
            return self.rsample(n, context, generator=generator, temperature=temperature)


#: The distribution a flow head returns when called on a context (the batched view every head shares).
FlowDistribution = BatchedConditional


def make_flow_head(features: int, **kwargs: Any) -> Callable[[int | None], FlowHead]:
    """A head factory for ``shared_embed.transfer``: ``factory(context_features)`` builds a new FlowHead.

    The arguments are checked now (an unknown backend or transform fails here, not mid-sweep).

    Example:
        >>> factory = make_flow_head(2, backend="nflows", transform="spline_ar")
        >>> factory(2).config["backend"]
        'nflows'
    """
    FlowHead(features, None, **kwargs)

    def factory(context_features: int | None) -> FlowHead:
        return FlowHead(features, context_features, **kwargs)

    factory.config = {"kind": FlowHead.kind, "features": features, **kwargs}  # type: ignore[attr-defined]
    return factory
