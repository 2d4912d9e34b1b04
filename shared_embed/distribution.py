"""The ``torch.distributions`` view of a conditional model on a batch of contexts, with torch's batching rules.

A context (*B, k) gives ``batch_shape`` B and ``event_shape`` (d,); no context gives batch_shape (). As in
``torch.distributions``:

- ``log_prob(value)``: value (*S, *B', d) with B' broadcastable against B -> (*broadcast(S + B', B)). One
  condition and many points (``model(c[:1]).log_prob(x)``) is one vectorised call, no Python loop.
- ``sample(sample_shape)`` / ``rsample(sample_shape)`` -> (*sample_shape, *B, d): ``model(c).sample((n,))`` with
  c (k, d_c) gives (n, k, d). Both take ``generator=`` for reproducible draws.

The owner (a head, or a fitted model on its embedding) supplies two row-wise callables; every call flattens the
batch to rows once and reshapes the result.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .errors import ShapeError
from .rng import check_generator
from .validation import check_tensor

__all__ = ["BatchedConditional", "LogProbRows", "SampleRows", "broadcast_batch", "flatten_rows"]

#: ``log_prob_rows(x (m, d), context (m, k) or None) -> (m,)``.
LogProbRows = Callable[[Tensor, "Tensor | None"], Tensor]
#: ``sample_rows(m, context (m, k) or None, generator, reparameterized) -> (m, d)``.
SampleRows = Callable[[int, "Tensor | None", "torch.Generator | None", bool], Tensor]


def broadcast_batch(name: str, value: Tensor, batch: torch.Size, features: int) -> torch.Size:
    """The broadcast of value's batch dims (all but the last) with ``batch``; ShapeError naming both shapes."""
    check_tensor(name, value, last_dim=features)
    try:
        shape: torch.Size = torch.broadcast_shapes(value.shape[:-1], batch)
        return shape
    except RuntimeError as err:
        raise ShapeError(
            f"{name} of shape {tuple(value.shape)} does not broadcast with the batch shape {tuple(batch)} of the "
            f"conditions: give (..., {features}) whose leading dims match or are 1"
        ) from err


def flatten_rows(value: Tensor, shape: torch.Size) -> Tensor:
    """value (..., f) expanded to (*shape, f) and flattened to (prod(shape), f)."""
    return value.expand(*shape, value.shape[-1]).reshape(-1, value.shape[-1])


class BatchedConditional(Distribution):
    """p(x | context) for every row of a context (*B, k) (or the unconditional law); see the module docstring."""

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector

    def __init__(
        self,
        features: int,
        context: Tensor | None,
        log_prob_rows: LogProbRows,
        sample_rows: SampleRows,
        has_rsample: bool = False,
    ) -> None:
        self.context = context
        self._log_prob_rows = log_prob_rows
        self._sample_rows = sample_rows
        self._has_rsample = has_rsample
        batch = torch.Size(()) if context is None else context.shape[:-1]
        super().__init__(batch, torch.Size((features,)), validate_args=False)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self._has_rsample

    @property
    def features(self) -> int:
        return self.event_shape[0]

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(value | context), shape broadcast(value.shape[:-1], batch_shape), in nats."""
        shape = broadcast_batch("value", value, self.batch_shape, self.features)
        if shape.numel() == 0:
            return value.new_zeros(shape)
        ctx = None if self.context is None else flatten_rows(self.context, shape)
        return self._log_prob_rows(flatten_rows(value, shape), ctx).reshape(shape)

    def _draw(self, sample_shape: Sequence[int], generator: torch.Generator | None, reparameterized: bool) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        check_generator(generator)
        m = shape.numel()
        if m == 0:
            raise ShapeError(
                f"sample_shape {tuple(sample_shape)} with batch shape {tuple(self.batch_shape)} asks for no draws"
            )
        ctx = None if self.context is None else flatten_rows(self.context, shape)
        return self._sample_rows(m, ctx, generator, reparameterized).reshape(*shape, self.features)

    def rsample(
        self,
        sample_shape: Sequence[int] = torch.Size(),
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(*sample_shape, *batch_shape, d) draws that carry gradients to the parameters."""
        if not self._has_rsample:
            raise NotImplementedError("this model has no reparameterised sampler (has_rsample is False); use sample")
        return self._draw(sample_shape, generator, True)

    def sample(
        self,
        sample_shape: Sequence[int] = torch.Size(),
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(*sample_shape, *batch_shape, d) draws without gradients."""
        with torch.no_grad():
            return self._draw(sample_shape, generator, False)
