"""The data contract: paired samples (c, x) of one task, validated once, split and batched without copies."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import DataError, DTypeError, ShapeError
from .validation import check_fraction, check_matrix, check_positive_int

__all__ = ["PairedData", "check_same_rows", "iterate_batches"]


@dataclass(frozen=True)
class PairedData:
    """Paired samples of one task: conditions ``c`` (n, d_c) and outcomes ``x`` (n, d_x).

    ``c`` may be None for an unconditional task. Construction checks that both are finite 2-D float
    tensors with the same number of rows (at least one). Numpy arrays, DataFrames, integer or float64 data,
    TensorDatasets and DataLoaders: convert them with :func:`shared_embed.convert.as_paired_data`, which the fit
    calls use too.

    Example:
        >>> data = PairedData(torch.randn(100, 16), torch.randn(100, 2))
        >>> train, val = data.split(0.2, torch.Generator().manual_seed(0))
        >>> len(train), len(val)
        (80, 20)
    """

    c: Tensor | None
    x: Tensor

    def __post_init__(self) -> None:
        for name, value in (("c", self.c), ("x", self.x)):
            if value is not None and not isinstance(value, Tensor):
                raise DTypeError(
                    f"PairedData takes torch tensors; {name} is a {type(value).__name__}: convert numpy arrays, "
                    "DataFrames and datasets with as_paired_data(c, x) (from shared_embed or gentransfer)"
                )
        check_matrix("x", self.x)
        if self.c is not None:
            check_matrix("c", self.c)
            if self.c.shape[0] != self.x.shape[0]:
                raise ShapeError(
                    f"c and x must have the same number of rows, got c {tuple(self.c.shape)} "
                    f"and x {tuple(self.x.shape)}"
                )
            if self.c.device != self.x.device:
                raise ShapeError(f"c and x must be on one device, got {self.c.device} and {self.x.device}")

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def d_x(self) -> int:
        return self.x.shape[1]

    @property
    def d_c(self) -> int | None:
        return None if self.c is None else self.c.shape[1]

    @property
    def conditional(self) -> bool:
        return self.c is not None

    def tensors(self) -> tuple[Tensor, ...]:
        """``(c, x)``, or ``(x,)`` for unconditional data: what the training loop batches."""
        return (self.x,) if self.c is None else (self.c, self.x)

    def subset(self, index: Tensor | slice) -> PairedData:
        """The rows selected by ``index`` (a LongTensor or a slice)."""
        return PairedData(None if self.c is None else self.c[index], self.x[index])

    def head(self, n: int) -> PairedData:
        """The first ``n`` rows (sample-size sweeps use nested subsets)."""
        check_positive_int("n", n)
        if n > len(self):
            raise DataError(f"n must be <= the {len(self)} rows available, got {n}")
        return self.subset(slice(0, n))

    def split(self, val_fraction: float, generator: torch.Generator | None = None) -> tuple[PairedData, PairedData]:
        """A random train/validation split; both parts keep at least one row."""
        check_fraction("val_fraction", val_fraction)
        n = len(self)
        n_val = int(round(n * val_fraction))
        if n < 2 or n_val < 1 or n_val >= n:
            raise DataError(
                f"cannot split {n} row(s) with val_fraction={val_fraction}: each part needs at least one row"
            )
        perm = torch.randperm(n, generator=generator, device="cpu").to(self.x.device)
        return self.subset(perm[n_val:]), self.subset(perm[:n_val])

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PairedData:
        move: Callable[[Tensor | None], Any] = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
        return PairedData(move(self.c), move(self.x))


def check_same_rows(tensors: Sequence[Tensor], name: str = "data") -> int:
    """Check that a tuple of tensors share their first dimension (>= 1); return it."""
    if len(tensors) == 0:
        raise DataError(f"{name} must hold at least one tensor")
    n = tensors[0].shape[0] if tensors[0].dim() else 0
    for i, t in enumerate(tensors):
        if t.dim() == 0 or t.shape[0] != n:
            shapes = [tuple(s.shape) for s in tensors]
            raise ShapeError(f"{name} tensors must share their first dimension, got shapes {shapes} (tensor {i})")
    if n == 0:
        raise DataError(f"{name} is empty: at least one row is needed")
    return n


def iterate_batches(
    tensors: Sequence[Tensor],
    batch_size: int,
    generator: torch.Generator,
    *,
    shuffle: bool = True,
    indices: Tensor | None = None,
) -> Iterator[tuple[Tensor, ...]]:
    """Yield ``tuple(t[idx] for t in tensors)`` over one epoch; only each batch is gathered, never the set.

    ``indices`` restricts the epoch to those rows (a distributed sampler passes its shard). The last
    partial batch is kept, so a data set smaller than ``batch_size`` gives one batch.
    """
    n = check_same_rows(tensors)
    check_positive_int("batch_size", batch_size)
    idx = torch.arange(n) if indices is None else indices
    if shuffle:
        idx = idx[torch.randperm(len(idx), generator=generator)]
    device = tensors[0].device
    for start in range(0, len(idx), batch_size):
        sel = idx[start : start + batch_size].to(device)
        yield tuple(t[sel] for t in tensors)
