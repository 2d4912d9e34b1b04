"""The head contract every generative head satisfies, and the registry that rebuilds heads from configs.

A head is an ``nn.Module`` modelling x (n, features) given a context (n, context_features), or no
context at all when ``context_features is None``:

- ``loss(x, context) -> Tensor``: the scalar the shared training loop minimises;
- ``log_prob(x, context) -> Tensor`` (n,): log-density of x, in nats;
- ``sample(n, context, generator=None) -> Tensor`` (n, features): one draw per context row; ``rsample`` where
  ``has_rsample`` (draws that carry gradients);
- ``head(context)``: a ``torch.distributions.Distribution`` with torch's batching rules (batch_shape = the
  context's leading dims), as a zuko conditional flow is.

Inference settings that are not part of the weights (a diffusion head's sampler, steps, tolerances) are
keyword options of ``sample`` / ``log_prob`` / ``head(context, ...)``, listed in ``SAMPLE_OPTIONS`` and
``LOG_PROB_OPTIONS``; they never enter ``config``.

The workflow never asks what kind of head it holds; ``flows`` and ``diffusion`` subclass :class:`Head`
and register themselves with :func:`register_head` so checkpoints can be rebuilt from their config.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar

import torch
from torch import Tensor, nn

from .distribution import BatchedConditional
from .errors import ConfigError, ShapeError
from .validation import check_context, check_matches, check_positive_int, check_tensor

__all__ = ["HEADS", "ExactFit", "Head", "build_head", "register_head"]


class Head(nn.Module, ABC):
    """Base class of conditional generative heads (see the module docstring for the contract)."""

    #: Registry name, set per class by :func:`register_head` (a wrapping head may report its inner head's).
    kind: str = ""
    #: Whether :meth:`rsample` gives draws that carry gradients to the parameters.
    has_rsample: ClassVar[bool] = False
    #: Keyword options of :meth:`sample` and of :meth:`log_prob` chosen at call time (not saved with the weights).
    SAMPLE_OPTIONS: ClassVar[tuple[str, ...]] = ()
    LOG_PROB_OPTIONS: ClassVar[tuple[str, ...]] = ()

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
        """Log-density (n,) of x (n, features) given context (n, context_features) or None.

        A subclass adds its ``LOG_PROB_OPTIONS`` as keyword-only arguments with defaults."""

    @abstractmethod
    def sample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw (n, features); context is None, (context_features,) shared, or (n, context_features).

        A subclass adds its ``SAMPLE_OPTIONS`` as keyword-only arguments with defaults."""

    def rsample(self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None) -> Tensor:
        """Like :meth:`sample`, with gradients to the parameters (heads with ``has_rsample`` only)."""
        raise NotImplementedError(
            f"{type(self).__name__} has no reparameterised sampler (has_rsample is False); use sample()"
        )

    def forward(self, context: Tensor | None = None, **options: Any) -> BatchedConditional:
        """The distribution of x given each row of context (*B, context_features) (or the unconditional law).

        ``options``: call-time settings of ``sample`` / ``log_prob`` (``SAMPLE_OPTIONS``, ``LOG_PROB_OPTIONS``).
        """
        sample_kw, log_prob_kw = self.split_options(options)
        context = check_context("context", context, self.context_features, batched=True)
        if context is not None:
            like = next(iter(self.parameters()), None)
            if like is not None:
                check_matches("context", context, like, f"this {type(self).__name__}")

        def log_prob_rows(x: Tensor, ctx: Tensor | None) -> Tensor:
            return self.log_prob(x, ctx, **log_prob_kw)

        def sample_rows(m: int, ctx: Tensor | None, generator: torch.Generator | None, reparam: bool) -> Tensor:
            draw = self.rsample if reparam else self.sample
            return draw(m, ctx, generator=generator, **sample_kw)

        return BatchedConditional(self.features, context, log_prob_rows, sample_rows, self.has_rsample)

    @classmethod
    def split_options(cls, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Route call-time options to ``sample`` and ``log_prob``; a ConfigError names an unknown one."""
        known = set(cls.SAMPLE_OPTIONS) | set(cls.LOG_PROB_OPTIONS)
        unknown = sorted(set(options) - known)
        if unknown:
            valid = ", ".join(sorted(known)) or "none"
            raise ConfigError(f"unknown option(s) {unknown} for {cls.__name__}; valid options: {valid}")
        return (
            {k: v for k, v in options.items() if k in cls.SAMPLE_OPTIONS},
            {k: v for k, v in options.items() if k in cls.LOG_PROB_OPTIONS},
        )

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
        for b in self.buffers():
            return b.device
        return torch.device("cpu")


class ExactFit(Protocol):
    """A head with an exact maximum-likelihood fit (e.g. the linear-Gaussian head): the workflow calls it
    instead of the training loop when the embedding is frozen."""

    def fit_closed_form(self, x: Tensor, context: Tensor | None = None) -> None: ...


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


# The ground floor's own heads register on import of this module, as they did when the package imported
# everything eagerly: a checkpoint of kind "gaussian" loads after importing only ``shared_embed.model``.
from . import gaussian, linear_gaussian  # noqa: E402, F401  (after Head and register_head: they import both)
