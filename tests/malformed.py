"""Hypothesis strategies for malformed inputs, and the assertion that only documented errors come out."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from hypothesis import strategies as st

from shared_embed.errors import GentransferError

DTYPES = [torch.float32, torch.float64, torch.int64, torch.bool]


@st.composite
def tensors(draw: st.DrawFn, max_rank: int = 3, max_dim: int = 5) -> Any:
    """Tensors of any rank 0..max_rank, sizes 0..max_dim, assorted dtypes, sometimes with NaN/inf; or non-tensors."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.sampled_from([None, 3, "x", [[1.0, 2.0]]]))
    shape = draw(st.lists(st.integers(0, max_dim), min_size=0, max_size=max_rank))
    dtype = draw(st.sampled_from(DTYPES))
    t = (torch.randn(shape) * 3).to(dtype) if dtype.is_floating_point else torch.zeros(shape, dtype=dtype)
    if dtype.is_floating_point and t.numel() and draw(st.booleans()):
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
    return t


@st.composite
def matrices(draw: st.DrawFn, cols: int, max_rows: int = 4) -> Any:
    """Near-valid inputs: (n, cols +- 1) tensors, n in 0..max_rows, assorted dtypes, sometimes NaN/inf, or
    anything from :func:`tensors`; these reach past the first shape check into the code underneath."""
    if draw(st.integers(0, 4)) == 0:
        return draw(tensors())
    shape = [draw(st.integers(0, max_rows)), draw(st.sampled_from([cols, cols, cols, max(cols - 1, 0), cols + 1]))]
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.float64, torch.int64]))
    t = (torch.randn(shape) * 3).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype)
    if dtype.is_floating_point and t.numel() and draw(st.integers(0, 3)) == 0:
        t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
    return t


def only_documented_errors(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; it may succeed or raise a GentransferError with a message, nothing else.

    A success must not return NaN: a silent NaN result is a failure too.
    """
    try:
        out = fn(*args, **kwargs)
    except GentransferError as err:
        assert str(err), "documented errors carry a message"
        return None
    if isinstance(out, torch.Tensor) and out.is_floating_point():
        assert bool(torch.isfinite(out).all()), f"{fn} returned non-finite values for valid-looking input"
    return out
