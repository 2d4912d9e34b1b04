"""``read_results(DIR)``: the records of any study's run folder as one table, whichever study wrote it.

Each record is one cell of the study's grid, flattened: a nested dict becomes dotted columns
(``{"fidelity_per_class": {"0": 0.9}}`` -> ``fidelity_per_class.0``); lists stay values of their cell. Records are
the cells as written (failed cells included, with their ``status`` and ``error`` where the study keeps them).

Example:
    >>> table = read_results("runs/default")            # a pandas DataFrame when pandas is installed
    >>> rows = read_results("runs/default", frame=False)  # else, or asked: a list of dicts
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from shared_embed.errors import DataError
from theory.engine.run_folder import read_json
from theory.engine.study import get_study, kind_of

__all__ = ["flatten_record", "read_results"]


def flatten_record(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``record`` with nested dicts spread into dotted keys (``a.b``); other values as they are."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_record(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_results(out_dir: str | os.PathLike[str], *, frame: bool | None = None) -> Any:
    """The records of the run folder ``out_dir``, one flat row per cell, with a ``study`` column (its kind).

    ``frame``: True returns a pandas DataFrame (ImportError naming pandas when it is missing), False a list of
    dicts, None (default) a DataFrame when pandas is installed, else the list. DataError when ``out_dir`` is not
    a run folder; a record that cannot be read is a DataError naming it (the study's own rule).
    """
    out = Path(out_dir)
    raw = read_json(out / "config.json")
    if raw is None:
        raise DataError(
            f"{os.fspath(out)!r} holds no config.json: read_results needs a folder written by 'gentransfer run'"
        )
    kind = kind_of(raw)
    rows = [{"study": kind, **flatten_record(r)} for r in get_study(kind).records(out)]
    if frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if frame:
            raise ImportError("read_results(frame=True) needs pandas: pip install pandas") from None
        return rows
    return pd.DataFrame.from_records(rows)
