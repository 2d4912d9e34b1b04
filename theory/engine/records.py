"""THE cell record of every study: one layout, one strict-JSON writer, one reader and one resume rule.

A record is one cell of a study's grid, a flat JSON object at ``DIR/cells/.../NAME.json``. Besides the study's own
coordinates (transfer: head, n_s, n_t, seed, variant; TGDP: seed, conditional, n_t, method; digits and completion:
seed, head, k or per_class, variant) and results, EVERY record carries the common fields :data:`COMMON_FIELDS`:

- ``status``: ``"ok"``, or ``"failed"`` with ``error`` (one line: the exception's type and message);
- ``settings_hash``: a digest of the resolved settings the cell depends on (:func:`settings_digest`);
- ``finished_at``: when the record was written (UTC, ISO 8601); durations are named ``*_seconds``.

Strict JSON: a run folder never holds a bare ``NaN`` or ``Infinity``. A non-finite float is written as ``null``
and its dotted path is listed, with its value as text (``"inf"``, ``"-inf"``, ``"nan"``), in the record's
``nonfinite`` field (absent when every float is finite): ``{"best_val": null, "nonfinite": {"best_val": "inf"}}``.
So ``null`` means "absent or non-finite", and ``nonfinite`` tells which. :func:`restore_nonfinite` gives a report
its floats back. :func:`dumps` writes with ``allow_nan=False``: a value that escaped the sanitiser fails loudly.

Resume (:func:`cell_state`): a record that is missing, unreadable or ``failed`` is run (again); one whose
``settings_hash`` differs from the current settings is refused with one line naming the file; else it is kept.

Example:
    >>> record = seal({"seed": 0, "variant": "transfer", "kl": 0.5}, settings_hash="0123abcd4567")
    >>> write_cell(out / "cells/gaussian/seed0_transfer.json", record)
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard

from shared_embed.checkpoint import atomic_write_text
from shared_embed.errors import ConfigError, DataError
from theory.engine.loop import run_cells

__all__ = [
    "COMMON_FIELDS",
    "OK",
    "FAILED",
    "cell_state",
    "dumps",
    "failed_lines",
    "failed_record",
    "failed_section",
    "json_number",
    "loads_strict",
    "now",
    "older_layout",
    "read_cell",
    "record_cells",
    "restore_nonfinite",
    "seal",
    "settings_digest",
    "split_failed",
    "to_run",
    "strict_json",
    "write_cell",
]

Record = dict[str, Any]
OK, FAILED = "ok", "failed"
#: The fields every cell record has, whatever its study (``error`` too when ``status`` is ``"failed"``).
COMMON_FIELDS = ("status", "settings_hash", "finished_at")
NONFINITE = "nonfinite"


def now() -> str:
    """The current UTC time as ISO 8601 text to the second (a record's ``finished_at``)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def settings_digest(settings: Any) -> str:
    """A 12-hex-digit SHA-256 digest of ``settings`` (JSON-able; keys sorted; non-finite floats as null): two
    cells with equal digests were computed from the same settings."""
    blob = json.dumps(strict_json(settings)[0], sort_keys=True, allow_nan=False).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


# -- strict JSON ----------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """A tensor or numpy array/scalar as Python data (``tolist()``); anything else as it is."""
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) and not isinstance(value, (str, bytes)) else value


def strict_json(value: Any, path: str = "") -> tuple[Any, dict[str, str]]:
    """``(value with every non-finite float replaced by None, {dotted path: "inf" | "-inf" | "nan"})``.

    Dicts, lists and tuples are walked (tuples become lists); tensors and numpy values become Python data first.
    Other values are returned as they are (``json.dumps`` refuses what is not JSON)."""
    value = _plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None, {path: str(value)}
    found: dict[str, str] = {}
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            out[key], more = strict_json(item, f"{path}.{key}" if path else str(key))
            found.update(more)
        return out, found
    if isinstance(value, (list, tuple)):
        items = []
        for i, item in enumerate(value):
            clean, more = strict_json(item, f"{path}.{i}" if path else str(i))
            items.append(clean)
            found.update(more)
        return items, found
    return value, found


def dumps(data: Any, default: Callable[[Any], Any] | None = None) -> str:
    """``data`` as strict JSON text (indent 1, trailing newline): non-finite floats as null (:func:`strict_json`),
    ``allow_nan=False`` so nothing non-finite slips through; ``default`` as ``json.dumps`` takes it."""
    return json.dumps(strict_json(data)[0], indent=1, allow_nan=False, default=default) + "\n"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")


def loads_strict(text: str) -> Any:
    """Parse JSON ``text``, refusing ``NaN``, ``Infinity`` and ``-Infinity`` (ValueError)."""
    return json.loads(text, parse_constant=_no_constant)


# -- one record ------------------------------------------------------------------------------------
def seal(record: Mapping[str, Any], *, settings_hash: str, status: str = OK, error: str | None = None) -> Record:
    """``record`` (the study's coordinates and results) with the common fields, in strict JSON values.

    Fields already in ``record`` keep their order; ``status``, ``settings_hash``, ``error`` (failed only),
    ``finished_at`` and, when some float was non-finite, ``nonfinite`` are set. ValueError on a bad status."""
    if status not in (OK, FAILED) or (status == FAILED) != (error is not None):
        raise ValueError(f"a record's status is 'ok', or 'failed' with an error; got {status!r}, error {error!r}")
    clean, nonfinite = strict_json({k: v for k, v in record.items() if k != NONFINITE})
    clean.update(status=status, settings_hash=settings_hash, finished_at=now())
    if error is not None:
        clean["error"] = error
    if nonfinite:
        clean[NONFINITE] = nonfinite
    return dict(clean)


def failed_record(coordinates: Mapping[str, Any], settings_hash: str, err: BaseException | str) -> Record:
    """The record of a cell that raised: its coordinates, ``status = "failed"`` and ``error`` (type: message)."""
    error = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return seal(coordinates, settings_hash=settings_hash, status=FAILED, error=error)


def json_number(value: Any, *, whole: bool = False) -> TypeGuard[int | float]:
    """Whether a value read from JSON is a number (a whole one with ``whole``): an int or float, never a bool."""
    return isinstance(value, int if whole else (int, float)) and not isinstance(value, bool)


def older_layout(record: Any) -> bool:
    """Whether ``record`` is a JSON object of the layout before the common fields (it has none of them)."""
    return isinstance(record, dict) and not any(k in record for k in COMMON_FIELDS)


def _problems(record: Any) -> list[str]:
    """What keeps ``record`` from being a cell record: a missing or ill-typed common field."""
    if not isinstance(record, dict):
        return ["not a JSON object"]
    bad = [f"missing {k!r}" for k in COMMON_FIELDS if k not in record]
    if record.get("status") not in (OK, FAILED):
        bad.append(f"status = {record.get('status')!r} (expected 'ok' or 'failed')")
    if record.get("status") == FAILED and not isinstance(record.get("error"), str):
        bad.append("a failed record without its error")
    if "settings_hash" in record and not isinstance(record["settings_hash"], str):
        bad.append(f"settings_hash = {record['settings_hash']!r} (expected text)")
    bad += [
        f"{k} = {v!r} (expected a number or null)"
        for k, v in record.items()
        if k.endswith("_seconds") and v is not None and not json_number(v)
    ]
    return bad


def write_cell(path: str | Path, record: Record) -> Record:
    """Write a sealed ``record`` (:func:`seal`) to ``path`` atomically, as strict JSON; returns it.
    ValueError when it lacks a common field or holds a value JSON cannot write."""
    bad = _problems(record)
    if bad:
        raise ValueError(f"not a cell record ({'; '.join(bad)}): seal it first")
    atomic_write_text(path, json.dumps(record, indent=1, allow_nan=False) + "\n")
    return record


def read_cell(path: str | Path, what: str = "cell record", *, older: bool = False) -> Record:
    """The record at ``path`` as written (nulls for non-finite values); DataError when it is a link, is not
    UTF-8 JSON, or lacks a common field (``what`` names it in the message). ``older``: also accept, as written, a
    record of the layout before the common fields (it has none of them), for a report of an older folder; a
    rerun refuses such a record (:func:`cell_state`)."""
    p = Path(path)
    try:
        if p.is_symlink():
            raise ValueError("a symbolic link")
        record = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{p} is not a readable {what} ({err})") from err
    if older and older_layout(record):
        return record
    bad = _problems(record)
    if bad:
        raise DataError(f"{p} is not a readable {what}: {'; '.join(bad[:3])}")
    return dict(record)


# -- resume ----------------------------------------------------------------------------------------
State = Literal["run", "done"]


def cell_state(
    path: str | Path,
    settings_hash: str,
    *,
    read: Callable[[Path], Record] = read_cell,
    differences: Callable[[Record], list[str]] | None = None,
) -> State:
    """THE resume rule: ``"run"`` when the record at ``path`` is missing, unreadable (``read`` raises DataError)
    or failed; ``"done"`` when it is ok with ``settings_hash``; ConfigError naming the file when it was computed
    with other settings (``differences(record)``, when given, says which), so records are never mixed."""
    try:
        record = read(Path(path))
    except DataError:
        _refuse_unmarked(Path(path))
        return "run"
    if record["status"] != OK:
        return "run"
    if record["settings_hash"] != settings_hash:
        diff = differences(record) if differences is not None else []
        why = (
            "; ".join(diff[:5]) if diff else f"settings_hash {record['settings_hash']!r}, this run's {settings_hash!r}"
        )
        raise ConfigError(
            f"{path} was computed with other settings ({why}); use a new --out folder, or delete the old cells "
            "to recompute them"
        )
    return "done"


def _refuse_unmarked(path: Path) -> None:
    """ConfigError when ``path`` holds a finished record that carries no ``settings_hash`` (written before records
    carried one): what it was computed from is unknown, so it is neither kept nor overwritten silently."""
    try:
        raw = None if path.is_symlink() else json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return
    if isinstance(raw, dict) and raw.get("status") != FAILED and "settings_hash" not in raw:
        raise ConfigError(
            f"{path} carries no settings_hash (written before every record did), so its settings are unknown; "
            "use a new --out folder, or delete the old cells to recompute them"
        )


def to_run(
    cells: Sequence[Any], out: Path | None, settings_hash: str, *, read: Callable[[Path], Record] = read_cell
) -> list[Any]:
    """The ``cells`` (each with a ``path`` inside the run folder) whose record in ``out`` is missing, unreadable
    (``read`` raises DataError: a study passes its own reader to refuse ill-typed fields too) or failed
    (:func:`cell_state`; ConfigError for a record of other settings); all of them when ``out`` is None."""
    return [c for c in cells if out is None or cell_state(out / c.path, settings_hash, read=read) == "run"]


# -- running cells into records --------------------------------------------------------------------
def record_cells(
    cells: Sequence[Any],
    prepare: Callable[[], Callable[[Any], Record]],
    *,
    coordinates: Callable[[Any], Record],
    settings_hash: str,
    path: Callable[[Any], Path | None],
    on_cell: Callable[[], None],
    say: Callable[[str], None] = lambda _m: None,
) -> list[Record]:
    """The records of a group of ``cells``, each sealed (:func:`seal`) and written to ``path(cell)`` (None: kept in
    memory only) as soon as it is done; ``on_cell()`` after each.

    ``prepare()`` fits what the group shares and returns ``one(cell) -> the cell's coordinates and results``. A
    cell that raises gets a ``failed`` record of its ``coordinates(cell)`` (a rerun retries it), and so does every
    cell of a group whose ``prepare`` raises; a ConfigError (a mistake in the config) stops the run instead."""
    try:
        one = prepare()
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001  (every cell records it; the report lists it)
        shared = f"the group's shared fit failed: {type(err).__name__}: {err}"
        return run_cells(cells, lambda c: _finish(c, None, shared, coordinates, settings_hash, path, say), on_cell)
    return run_cells(cells, lambda c: _finish(c, one, None, coordinates, settings_hash, path, say), on_cell)


def _finish(
    cell: Any,
    one: Callable[[Any], Record] | None,
    error: str | None,
    coordinates: Callable[[Any], Record],
    settings_hash: str,
    path: Callable[[Any], Path | None],
    say: Callable[[str], None],
) -> Record:
    """One cell of :func:`record_cells`: its sealed record (ok, or failed with ``error`` or what ``one`` raised)."""
    record: Record | None = None
    if one is not None:
        try:
            record = seal(one(cell), settings_hash=settings_hash)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001
            error = f"{type(err).__name__}: {err}"
    if record is None:
        record = failed_record(coordinates(cell), settings_hash, error or "unknown error")
        say(f"[{' '.join(f'{k}={v}' for k, v in coordinates(cell).items())}] FAILED: {error}")
    where = path(cell)
    if where is not None:
        write_cell(where, record)
    return record


# -- reading for a report --------------------------------------------------------------------------
def restore_nonfinite(record: Record) -> Record:
    """A copy of ``record`` with the floats its ``nonfinite`` field lists put back (``inf``, ``nan``) in place of
    their nulls, for a report whose arithmetic expects them; records without it are returned as they are."""
    listed = record.get(NONFINITE)
    if not isinstance(listed, dict) or not listed:
        return record
    out = copy.deepcopy(record)
    for where, text in listed.items():
        *parents, last = str(where).split(".")
        node: Any = out
        try:
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            if isinstance(node, list):
                node[int(last)] = float(text)
            else:
                node[last] = float(text)
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # a hand-edited record: the null stays
    return dict(out)


def split_failed(records: list[Record]) -> tuple[list[Record], list[Record]]:
    """(the ok records with their non-finite floats restored, the failed records): what a report tabulates and
    what it lists as failed."""
    ok = [restore_nonfinite(r) for r in records if r.get("status", OK) == OK]
    return ok, [r for r in records if r.get("status", OK) != OK]


def failed_section(failed: list[Record], coordinates: tuple[str, ...]) -> list[str]:
    """The Markdown lines of a report's "Failed cells" section (none when nothing failed): one bullet per failed
    record, its coordinates and error (a rerun retries them)."""
    if not failed:
        return []
    return [
        "## Failed cells",
        "",
        f"{len(failed)} cell(s) failed; run the same command again to retry them:",
        "",
        *[f"- {line}" for line in failed_lines(failed, coordinates)],
        "",
    ]


def failed_lines(records: list[Record], coordinates: tuple[str, ...]) -> list[str]:
    """One line per failed record: its ``coordinates`` (``seed=0 head=gaussian ...``) and its error."""
    return [
        " ".join(f"{k}={r.get(k)}" for k in coordinates if k in r) + f": {r.get('error')}"
        for r in records
        if r.get("status", OK) != OK
    ]
