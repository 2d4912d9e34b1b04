"""The simple baseline head: a conditional diagonal Gaussian whose mean and log-variance come from an MLP."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .head import Head, register_head
from .mlp import mlp
from .rng import check_generator

__all__ = ["GaussianHead"]


@register_head("gaussian")
class GaussianHead(Head):
    """x | context ~ N(mu(context), diag(exp(log_var(context)))); unconditional: learned constants.

    Example:
        >>> head = GaussianHead(features=2, context_features=3)
        >>> head.log_prob(torch.randn(5, 2), torch.randn(5, 3)).shape
        torch.Size([5])
    """

    has_rsample = True

    def __init__(
        self,
        features: int,
        context_features: int | None = None,
        hidden: Sequence[int] = (64, 64),
        activation: str = "silu",
    ) -> None:
        super().__init__(features, context_features)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        if context_features is None:
            self.params = nn.Parameter(torch.zeros(2 * features))
        else:
            self.net = mlp(context_features, 2 * features, self.hidden, activation)

    @property
    def config(self) -> dict[str, Any]:
        return {
            "features": self.features,
            "context_features": self.context_features,
            "hidden": list(self.hidden),
            "activation": self.activation,
        }

    def _moments(self, n: int, context: Tensor | None) -> tuple[Tensor, Tensor]:
        out = self.params.expand(n, -1) if context is None else self.net(context)
        mean, log_var = out.chunk(2, dim=-1)
        return mean, log_var.clamp(-12.0, 12.0)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        x, context = self.check_inputs(x, context)
        mean, log_var = self._moments(x.shape[0], context)
        z2 = (x - mean).square() * torch.exp(-log_var)
        return -0.5 * (z2 + log_var + math.log(2 * math.pi)).sum(-1)

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return -self.log_prob(x, context).mean()

    def rsample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """(n, features) draws mu + sigma * e that carry gradients; context None, (k,) shared or (n, k)."""
        context = self.sample_context(n, context)
        mean, log_var = self._moments(n, context)
        noise = torch.randn(mean.shape, generator=check_generator(generator), dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * log_var) * noise

    def sample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """(n, features) draws without gradients; context None, (k,) shared or (n, k)."""
        with torch.no_grad():
            return self.rsample(n, context, generator=generator)
