"""Argument checks shared by every public entry point. Each raises a documented error naming the argument."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, overload

import torch
from torch import Tensor

from .errors import ConfigError, DataError, DTypeError, ShapeError

__all__ = [
    "check_choice",
    "check_context",
    "check_fraction",
    "check_matches",
    "check_matrix",
    "check_positive_float",
    "check_positive_int",
    "check_tensor",
]


def check_tensor(
    name: str,
    value: Any,
    *,
    ndim: int | None = None,
    last_dim: int | None = None,
    rows: int | None = None,
    min_rows: int = 0,
    finite: bool = True,
) -> Tensor:
    """Check that ``value`` is a floating tensor of the expected shape with finite entries; return it.

    Args:
        name: the argument's name, used in error messages.
        ndim: required number of dimensions (None: any).
        last_dim: required size of the last dimension (None: any).
        rows: required size of the first dimension (None: any).
        min_rows: minimum size of the first dimension.
        finite: reject NaN and inf.
    """
    if not isinstance(value, Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise DTypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    if ndim is not None and value.dim() != ndim:
        raise ShapeError(f"{name} must have {ndim} dimension(s), got shape {tuple(value.shape)}")
    if last_dim is not None and (value.dim() == 0 or value.shape[-1] != last_dim):
        raise ShapeError(f"{name} must have last dimension {last_dim}, got shape {tuple(value.shape)}")
    if value.dim() >= 1:
        if rows is not None and value.shape[0] != rows:
            raise ShapeError(f"{name} must have {rows} rows, got shape {tuple(value.shape)}")
        if value.shape[0] < min_rows:
            raise DataError(f"{name} must have at least {min_rows} row(s), got {value.shape[0]}")
    if finite and value.numel() and not _all_finite(value):
        bad = int((~torch.isfinite(value)).sum())
        raise DataError(f"{name} contains {bad} NaN or inf value(s); all entries must be finite")
    return value


def _all_finite(value: Tensor) -> bool:
    """Whether every entry is finite, in two tensor operations where it is so: a NaN or inf entry makes the sum
    NaN or inf, so a finite sum settles it; only a sum that is not finite (a bad entry, or finite entries whose
    sum overflows) needs the entry-wise check. This runs on every batch of every loss (the hot path)."""
    return math.isfinite(float(value.detach().sum())) or bool(torch.isfinite(value).all())


def check_matrix(name: str, value: Any, cols: int | None = None, *, min_rows: int = 1) -> Tensor:
    """Check a finite 2-D float tensor (n, cols) with at least ``min_rows`` rows."""
    return check_tensor(name, value, ndim=2, last_dim=cols, min_rows=min_rows)


def check_positive_int(name: str, value: Any, *, minimum: int = 1) -> int:
    """Check an integer ``>= minimum`` (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DTypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise DataError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_fraction(name: str, value: Any, *, low: float = 0.0, high: float = 1.0, closed: bool = False) -> float:
    """Check a real number in (low, high) (or [low, high] when ``closed``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DTypeError(f"{name} must be a number, got {type(value).__name__}")
    ok = low <= value <= high if closed else low < value < high
    if not ok or value != value:
        bounds = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise DataError(f"{name} must lie in {bounds}, got {value}")
    return float(value)


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Check a finite real number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DTypeError(f"{name} must be a number, got {type(value).__name__}")
    v = float(value)
    if not (v == v and v != float("inf")) or v < 0 or (v == 0 and not allow_zero):
        raise DataError(f"{name} must be a finite number {'>=' if allow_zero else '>'} 0, got {value}")
    return v


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Check that ``value`` is one of ``choices``; the error lists the valid names."""
    valid = sorted(choices)
    if value not in valid:
        raise ConfigError(f"unknown {name} {value!r}; valid choices: {', '.join(map(repr, valid))}")
    choice: str = value
    return choice


@overload
def check_context(
    name: str, context: None, expected: int | None, rows: int | None = None, *, batched: bool = False
) -> None: ...
@overload
def check_context(
    name: str, context: Tensor, expected: int | None, rows: int | None = None, *, batched: bool = False
) -> Tensor: ...
@overload
def check_context(
    name: str, context: object, expected: int | None, rows: int | None = None, *, batched: bool = False
) -> Tensor | None: ...
def check_context(
    name: str, context: object, expected: int | None, rows: int | None = None, *, batched: bool = False
) -> Tensor | None:
    """Check a head's context: None for an unconditional head, else (rows, expected) finite floats.

    ``batched``: any leading batch dims, (*B, expected), as a distribution's context may have.
    """
    if expected is None:
        if context is not None:
            raise ShapeError(f"{name} must be None: this head is unconditional (context_features=None)")
        return None
    if context is None:
        raise ShapeError(f"{name} is required: this head is conditional on {expected} context features")
    if batched:
        return check_tensor(name, context, last_dim=expected)
    return check_tensor(name, context, ndim=2, last_dim=expected, rows=rows)


def check_matches(name: str, value: Tensor, like: Tensor, owner: str = "the model") -> Tensor:
    """Check that ``value`` has the dtype and device of ``like`` (a parameter or buffer of ``owner``)."""
    if value.dtype != like.dtype:
        raise DTypeError(
            f"{name} has dtype {value.dtype} but {owner} uses {like.dtype}; cast the input (e.g. "
            f"{name}.to({like.dtype})) or the module (.to(dtype))"
        )
    if value.device != like.device:
        raise DTypeError(f"{name} is on {value.device} but {owner} is on {like.device}; move one of them")
    return value
