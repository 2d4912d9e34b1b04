"""The head contract every generative head satisfies, and the registry that rebuilds heads from configs.

A head is an ``nn.Module`` modelling x (n, features) given a context (n, context_features), or no
context at all when ``context_features is None``:

- ``loss(x, context) -> Tensor``: the scalar the shared training loop minimises;
- ``log_prob(x, context) -> Tensor`` (n,): log-density of x, in nats;
- ``sample(n, context) -> Tensor`` (n, features): one draw per context row.

The workflow never asks what kind of head it holds; ``flows`` and ``diffusion`` subclass :class:`Head`
and register themselves with :func:`register_head` so checkpoints can be rebuilt from their config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from .errors import ConfigError, ShapeError
from .validation import check_context, check_matches, check_positive_int, check_tensor


class Head(nn.Module, ABC):
    """Base class of conditional generative heads (see the module docstring for the contract)."""

    #: Registry name, set by :func:`register_head`.
    kind: ClassVar[str] = ""

    def __init__(self, features: int, context_features: int | None) -> None:
        super().__init__()
        check_positive_int("features", features)
        if context_features is not None:
            check_positive_int("context_features", context_features)
        self.features = features
        self.context_features = context_features

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``type(head)(**head.config)`` rebuilds it."""

    @abstractmethod
    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Scalar training loss on a batch x (n, features)."""

    @abstractmethod
    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Log-density (n,) of x (n, features) given context (n, context_features) or None."""

    @abstractmethod
    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """Draw (n, features); context is None, (context_features,) shared, or (n, context_features)."""

    # -- helpers for subclasses ------------------------------------------------------------------
    def check_inputs(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """Validate x (n, features) and the context (n, context_features) or None."""
        check_tensor("x", x, ndim=2, last_dim=self.features, min_rows=1)
        context = check_context("context", context, self.context_features, rows=x.shape[0])
        like = next(iter(self.parameters()), None)
        if like is not None:
            check_matches("x", x, like, f"this {type(self).__name__}")
            if context is not None:
                check_matches("context", context, like, f"this {type(self).__name__}")
        return x, context

    def sample_context(self, n: int, context: Tensor | None) -> Tensor | None:
        """Validate ``n`` and broadcast a shared context (context_features,) or (1, .) to (n, .)."""
        check_positive_int("n", n)
        if context is not None:
            check_tensor("context", context)
        if context is not None and self.context_features is not None:
            if context.dim() == 1:
                context = context.unsqueeze(0)
            if context.dim() == 2 and context.shape[0] == 1 and n > 1:
                context = context.expand(n, -1)
            if context.dim() == 2 and context.shape[0] != n:
                raise ShapeError(
                    f"context must be (n={n}, {self.context_features}), (1, {self.context_features}) or "
                    f"({self.context_features},), got shape {tuple(context.shape)}"
                )
        context = check_context("context", context, self.context_features, rows=n)
        like = next(iter(self.parameters()), None)
        if context is not None and like is not None:
            check_matches("context", context, like, f"this {type(self).__name__}")
        return context

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")


HEADS: dict[str, type[Head]] = {}
H = TypeVar("H", bound=type[Head])


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator: make a head rebuildable from a checkpoint under ``name``."""

    def deco(cls: H) -> H:
        if name in HEADS and HEADS[name] is not cls:
            raise ConfigError(f"head kind {name!r} is already registered to {HEADS[name].__qualname__}")
        cls.kind = name
        HEADS[name] = cls
        return cls

    return deco


def build_head(kind: str, config: dict[str, Any]) -> Head:
    """Rebuild a registered head from its ``kind`` and ``config``."""
    if kind not in HEADS:
        hint = {"flow": "flows", "diffusion": "diffusion"}.get(kind)
        extra = f" (import the package {hint!r} first so it registers its heads)" if hint else ""
        raise ConfigError(f"unknown head kind {kind!r}; registered: {sorted(HEADS)}{extra}")
    try:
        return HEADS[kind](**config)
    except TypeError as err:
        raise ConfigError(f"config does not fit head kind {kind!r}: {err}") from err
