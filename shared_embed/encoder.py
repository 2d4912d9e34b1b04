"""The shared embedding h: R^{d_c} -> R^{d_h}, learned on the source task and then frozen."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

from torch import Tensor, nn

from .mlp import mlp
from .validation import check_matches, check_tensor

__all__ = ["Embedding", "Encoder", "FixedEmbedding"]


class Embedding(Protocol):
    """What a model reads of its embedding h: c (n, in_features) -> (n, out_features).

    An :class:`Encoder`, a :class:`FixedEmbedding`, an ``nn.Linear`` or a task's true h* all qualify; at run time
    the embedding is also an ``nn.Module`` (the model registers it as a submodule).
    """

    in_features: int
    out_features: int

    def __call__(self, c: Tensor, /) -> Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]: ...


class Encoder(nn.Module):
    """An MLP embedding ``h(c)``: (n, in_features) -> (n, out_features).

    Example:
        >>> enc = Encoder(16, 2, hidden=(64, 64))
        >>> enc(torch.randn(5, 16)).shape
        torch.Size([5, 2])
        >>> enc.freeze().frozen
        True
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        activation: str = "silu",
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.net = mlp(in_features, out_features, self.hidden, activation)
        self._frozen = False

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``Encoder(**enc.config)`` rebuilds the architecture."""
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "hidden": list(self.hidden),
            "activation": self.activation,
        }

    def forward(self, c: Tensor) -> Tensor:
        check_tensor("c", c, ndim=2, last_dim=self.in_features)
        check_matches("c", c, cast(nn.Linear, self.net[0]).weight, "the encoder")  # mlp() starts with a Linear
        h: Tensor = self.net(c)
        return h

    def freeze(self) -> Encoder:
        """Stop gradients to every parameter and switch to eval mode for good; returns self."""
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        return super().train(False)

    def unfreeze(self) -> Encoder:
        """Undo :meth:`freeze` (fine-tuning trains the encoder again)."""
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen = False
        return self

    @property
    def is_linear(self) -> bool:
        """True when ``h(c) = W c + b`` (no hidden layer): with a linear-Gaussian head, its maximum-likelihood
        fit is reduced-rank regression (:mod:`shared_embed.reduced_rank`), solved exactly."""
        return not self.hidden

    @property
    def frozen(self) -> bool:
        """True after :meth:`freeze`: no parameter takes gradients."""
        return self._frozen

    def train(self, mode: bool = True) -> Encoder:
        # A frozen encoder stays in eval mode even when a parent module is put in train mode.
        return super().train(mode and not self._frozen)


class FixedEmbedding(nn.Module):
    """A known, frozen embedding (e.g. a task's true h*) wrapped as a module for the oracle variant."""

    def __init__(self, fn: Embedding, in_features: int, out_features: int) -> None:
        super().__init__()
        self.fn = fn
        self.in_features = in_features
        self.out_features = out_features
        for p in self.fn.parameters():
            p.requires_grad_(False)

    frozen = True

    def forward(self, c: Tensor) -> Tensor:
        check_tensor("c", c, ndim=2, last_dim=self.in_features)
        return self.fn(c)
