"""Your own data as :class:`~shared_embed.data.PairedData`: ONE call, :func:`as_paired_data`, converts what you have.

Accepted, for ``c`` and ``x`` each: a numpy array or a torch tensor of any real dtype (float16/32/64, ints,
bools), a pandas DataFrame or Series of numeric columns, or nested lists; ``c`` may be None (an unconditional
task). Or, as the only argument: a ``(c, x)`` pair, a PairedData, a ``torch.utils.data.TensorDataset`` of ``(c, x)``
(or ``(x,)``), any map-style ``Dataset`` or ``DataLoader`` whose items/batches are ``(c, x)`` pairs, or one
DataFrame with the columns named by ``c_columns`` and ``x_columns``.

Everything is cast to ``dtype`` (float32 unless said otherwise: the dtype of the model it will train) here,
explicitly, and checked here: 2-D (a 1-D array is refused, since one row and one column cannot be told apart),
the same rows in c and x, every entry finite (also after the cast: a float64 value beyond float32's range is
named). pandas is never imported: a DataFrame is recognised by what it offers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .data import PairedData
from .errors import DataError, DTypeError, ShapeError

__all__ = ["as_paired_data"]

_NUMERIC_KINDS = "biuf"  # numpy dtype kinds: bool, signed and unsigned ints, floats


def as_paired_data(
    c: Any,
    x: Any = None,
    *,
    c_columns: Sequence[str] | None = None,
    x_columns: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    name: str = "data",
) -> PairedData:
    """``(c, x)`` in any accepted form (see the module docstring) as a PairedData of ``dtype`` on ``device``.

    Args:
        c: conditions (n, d_c) or None; or the whole data set when ``x`` is not given.
        x: outcomes (n, d_x).
        c_columns / x_columns: with one DataFrame as ``c``: the column names of c and of x (c_columns None or
            empty: an unconditional task).
        dtype: a floating dtype; every tensor is cast to it. device: where the tensors go (None: where they are;
            numpy and pandas data start on the CPU).
        name: the data set's name in error messages (e.g. ``"source"``).

    Raises:
        DTypeError: a type or dtype that is not numeric data (strings, objects, complex numbers).
        ShapeError: not 2-D, or c and x with different numbers of rows.
        DataError: NaN or inf entries (named with their count and the first row), or no rows.

    Example:
        >>> from sklearn.datasets import load_diabetes
        >>> X, y = load_diabetes(return_X_y=True)  # float64 numpy arrays
        >>> data = as_paired_data(X, y.reshape(-1, 1), name="source")
        >>> data.c.dtype, data.c.shape, data.x.shape
        (torch.float32, torch.Size([442, 10]), torch.Size([442, 1]))
    """
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise DTypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    if _is_dataframe(c) and x is None:
        c, x = _columns(c, c_columns, x_columns, name)
    elif c_columns is not None or x_columns is not None:
        raise DTypeError(
            f"c_columns/x_columns select columns of one DataFrame passed alone, as_paired_data(df, c_columns=..., "
            f"x_columns=...); got {type(c).__name__} and {type(x).__name__}"
        )
    elif x is None:
        c, x = _unpack(c, name)
    cx = None if c is None else _matrix(f"{name}.c", c, dtype)
    xx = _matrix(f"{name}.x", x, dtype)
    if cx is not None and cx.shape[0] != xx.shape[0]:
        raise ShapeError(
            f"{name}: c has {cx.shape[0]} rows and x has {xx.shape[0]}; row i of c must be the condition of row i of x"
        )
    if device is not None:
        cx = None if cx is None else cx.to(device)
        xx = xx.to(device)
    elif cx is not None and cx.device != xx.device:
        raise ShapeError(f"{name}: c is on {cx.device} and x on {xx.device}; pass device= to move both")
    return PairedData(cx, xx)


def _is_dataframe(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "columns")


def _is_series(value: Any) -> bool:
    return type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "to_frame")


def _columns(
    frame: Any, c_columns: Sequence[str] | None, x_columns: Sequence[str] | None, name: str
) -> tuple[Any, Any]:
    """The c and x columns of one DataFrame (c None when ``c_columns`` is None or empty)."""
    if not x_columns or isinstance(x_columns, str):
        raise DTypeError(
            f"{name}: with one DataFrame, say which columns are x: x_columns=[...] (a list of names), and "
            f"c_columns=[...] for the conditions; columns: {list(frame.columns)}"
        )
    if isinstance(c_columns, str):
        raise DTypeError(f"{name}: c_columns must be a list of column names, got the string {c_columns!r}")
    for label, cols in (("c_columns", c_columns or []), ("x_columns", x_columns)):
        unknown = [col for col in cols if col not in frame.columns]
        if unknown:
            raise DataError(f"{name}: {label} names {unknown}, not columns of the DataFrame {list(frame.columns)}")
    both = set(c_columns or []) & set(x_columns)
    if both:
        raise DataError(f"{name}: column(s) {sorted(both)} are in both c_columns and x_columns")
    return (frame[list(c_columns)] if c_columns else None), frame[list(x_columns)]


def _unpack(data: Any, name: str) -> tuple[Any, Any]:
    """(c, x) of a data set given as one object."""
    if isinstance(data, PairedData):
        return data.c, data.x
    if isinstance(data, (tuple, list)) and len(data) == 2 and not _is_row_list(data):
        return data[0], data[1]
    if isinstance(data, torch.utils.data.TensorDataset):
        return _pair(data.tensors, f"{name} (a TensorDataset)")
    if isinstance(data, torch.utils.data.DataLoader):
        return _concatenate(data, f"{name} (a DataLoader)")
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        loader = torch.utils.data.DataLoader(data, batch_size=1024, shuffle=False)
        return _concatenate(loader, f"{name} (a {type(data).__name__})")
    raise DTypeError(
        f"{name} must be (c, x) data: as_paired_data(c, x) with numpy arrays, torch tensors or DataFrames, or one "
        f"(c, x) pair, PairedData, TensorDataset, DataLoader, or DataFrame with c_columns/x_columns; got "
        f"{type(data).__name__}"
    )


def _is_row_list(data: Sequence[Any]) -> bool:
    """A list of two plain-number rows (a 2 x d matrix), not a (c, x) pair."""
    return isinstance(data, list) and all(
        isinstance(r, (list, tuple)) and all(isinstance(v, (int, float)) for v in r) for r in data
    )


def _pair(parts: Sequence[Any], what: str) -> tuple[Any, Any]:
    if len(parts) == 2:
        return parts[0], parts[1]
    if len(parts) == 1:
        return None, parts[0]
    raise ShapeError(f"{what} must hold (c, x) or (x,) per row, got {len(parts)} tensors")


def _concatenate(loader: Any, what: str) -> tuple[Any, Any]:
    """Every batch of ``loader``, (c, x) pairs, concatenated row-wise."""
    cs: list[Tensor] = []
    xs: list[Tensor] = []
    for i, batch in enumerate(loader):
        if isinstance(batch, Tensor):
            batch = (batch,)
        if not isinstance(batch, (tuple, list)):
            raise DTypeError(f"{what}: batch {i} is a {type(batch).__name__}; each batch must be a (c, x) pair")
        c, x = _pair(batch, f"{what} batch {i}")
        cs.append(torch.as_tensor(c) if c is not None else None)  # type: ignore[arg-type]
        xs.append(torch.as_tensor(x))
    if not xs:
        raise DataError(f"{what} yielded no batch: at least one row is needed")
    if any(c is None for c in cs) != all(c is None for c in cs):
        raise ShapeError(f"{what}: some batches hold c and some do not")
    c_all = None if cs[0] is None else torch.cat(cs)
    return c_all, torch.cat(xs)


def _matrix(name: str, value: Any, dtype: torch.dtype) -> Tensor:
    """``value`` as a finite 2-D tensor of ``dtype``; one-line errors naming ``name``."""
    if _is_series(value):
        value = value.to_frame()
    if _is_dataframe(value):
        value = _frame_array(name, value)
    if isinstance(value, Tensor):
        if value.is_complex() or not (value.is_floating_point() or value.dtype in _TORCH_INTS):
            raise DTypeError(f"{name} must hold real numbers, got a tensor of dtype {value.dtype}")
        tensor = value.detach()
    elif isinstance(value, (str, bytes)):
        raise DTypeError(f"{name} must be a numeric array, got a string")
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as err:
            raise DTypeError(f"{name} must be a numeric array, got {type(value).__name__} ({err})") from err
        if array.dtype.kind not in _NUMERIC_KINDS:
            raise DTypeError(
                f"{name} must hold real numbers, got a {type(value).__name__} of dtype {array.dtype} "
                "(strings, objects or complex numbers: convert or drop those columns first)"
            )
        writable = array.flags.writeable and array.flags.c_contiguous
        tensor = torch.from_numpy(array if writable else np.array(array, order="C"))  # torch needs writable arrays
    if tensor.dim() != 2:
        hint = f"; for one column use .reshape(-1, 1), shape ({tensor.shape[0]}, 1)" if tensor.dim() == 1 else ""
        raise ShapeError(f"{name} must be 2-D (rows, features), got shape {tuple(tensor.shape)}{hint}")
    if tensor.shape[0] == 0:
        raise DataError(f"{name} has no rows: at least one is needed")
    if tensor.is_floating_point():
        _check_finite(name, tensor, "")
    out = tensor.to(dtype)
    _check_finite(name, out, f" after the cast to {dtype} (values beyond its range)")
    return out


_TORCH_INTS = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _check_finite(name: str, tensor: Tensor, why: str) -> None:
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0])
        raise DataError(
            f"{name} has {int(bad.sum())} NaN or inf value(s){why} (first in row {row}); all entries must be finite"
        )


def _frame_array(name: str, frame: Any) -> np.ndarray:
    """A numeric DataFrame's values as float64 (missing values: NaN); a DTypeError naming the first non-numeric
    column (text, categories, dates)."""
    for col, dtype in zip(frame.columns, frame.dtypes):
        if getattr(dtype, "kind", "O") not in _NUMERIC_KINDS:
            raise DTypeError(f"{name}: column {col!r} is not numeric (dtype {dtype}); drop or encode it")
    values: np.ndarray = frame.to_numpy(dtype=np.float64, na_value=np.nan)
    return values
