"""The score network of a diffusion head: a residual MLP on (x_t, t, context) with a sinusoidal time embedding.

The network reads the noise level rather than raw t: ``lambda(t) = log(s_t / a_t)`` (half the negative log
signal-to-noise ratio, EDM's ``ln sigma``; about -6.9 at t = 1e-5 and 5 at t = 1 for the default schedule),
which spreads t near 0, where s_t changes fastest, over a wide range. Sinusoidal features of lambda at
angular frequencies geometric in [0.1, 10] (slow enough that the network is smooth in t, so adaptive ODE
solvers take few steps) pass through an MLP with SiLU; the context, when given, passes through its own MLP;
their sum modulates every residual block. Tensors are (batch, dim) only.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

from shared_embed.errors import DataError
from shared_embed.validation import check_positive_int

__all__ = ["ResidualBlock", "ScoreNetwork", "SinusoidalEmbedding"]


class SinusoidalEmbedding(nn.Module):
    """(n,) -> (n, features): [sin(w_j u), cos(w_j u)], angular frequencies w_j geometric in [min_freq, max_freq].

    Example:
        >>> SinusoidalEmbedding(16)(torch.rand(5)).shape
        torch.Size([5, 16])
    """

    freqs: Tensor  # buffer (features // 2,)

    def __init__(self, features: int, min_freq: float = 0.1, max_freq: float = 10.0) -> None:
        super().__init__()
        check_positive_int("features", features, minimum=2)
        if features % 2:
            raise DataError(f"features must be even, got {features}")
        freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), features // 2))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, u: Tensor) -> Tensor:
        arg = u.unsqueeze(-1) * self.freqs.to(u)
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class ResidualBlock(nn.Module):
    """h + W2 act(W1 act(LN(h)) + cond): pre-norm, the conditioning added between the two layers."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.inner = nn.Linear(width, width)
        self.outer = nn.Linear(width, width)
        self.cond = nn.Linear(width, width)
        self.act = nn.SiLU()

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        out: Tensor = h + self.outer(self.act(self.inner(self.act(self.norm(h))) + self.cond(cond)))
        return out


class ScoreNetwork(nn.Module):
    """F(x_t, lambda, context): (n, features), (n,), (n, context_features) or None -> (n, features).

    ``blocks`` pre-norm residual blocks of width ``width``, then LayerNorm -> SiLU -> Linear. The final
    LayerNorm bounds the output for ANY input (|F| <= ||W_out|| sqrt(width) max|SiLU| + |b|): an MLP otherwise
    grows linearly along x and the context, and on contexts outside the training data (a frozen embedding of
    fresh conditions, a head fit to 50 pairs) a growing, repulsive score makes the probability-flow ODE run
    away (docs/notes/2026-11-24-diffusion-head-design.md). The last layer starts at zero, so an
    untrained head's output is exactly its parameterisation's baseline (see ``diffusion.head``).

    Example:
        >>> net = ScoreNetwork(2, 3, width=32, blocks=2)
        >>> net(torch.randn(5, 2), torch.randn(5), torch.randn(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        features: int,
        context_features: int | None,
        width: int = 128,
        blocks: int = 3,
        time_features: int = 32,
    ) -> None:
        super().__init__()
        check_positive_int("width", width)
        check_positive_int("blocks", blocks)
        check_positive_int("time_features", time_features, minimum=2)
        self.time = nn.Sequential(
            SinusoidalEmbedding(time_features), nn.Linear(time_features, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.context = (
            None
            if context_features is None
            else nn.Sequential(nn.Linear(context_features, width), nn.SiLU(), nn.Linear(width, width))
        )
        self.inp = nn.Linear(features, width)
        self.blocks = nn.ModuleList(ResidualBlock(width) for _ in range(blocks))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, features))
        last = cast(nn.Linear, self.out[2])
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, noise_level: Tensor, context: Tensor | None = None) -> Tensor:
        cond = self.time(noise_level)
        if self.context is not None:
            cond = cond + self.context(context)
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, cond)
        out: Tensor = self.out(h)
        return out
