"""What a finished cell record must hold before a report reads it: a study declares the shape, the reader checks it.

:func:`theory.engine.records.read_cell` checks the fields every record has; the rest of a record is the study's
own, and a report formats, subtracts and indexes it. A hand-edited or damaged field (``"nll": "1"``, a deleted
``switch``, ``"max_ratio": "big"``, a null in place of a number) would surface there as a bare TypeError or
KeyError, or worse, as a number in a table. So each study declares the shape of what its report reads, and its
reader refuses a record that does not have it, in one line naming the file and the field by its dotted path; the
resume rule (``to_run(read=...)``) uses the same reader, so a rerun of the same command recomputes exactly that
cell.

A shape maps field names to what each must be:

- an :class:`Expect` (a test and its wording: :data:`NUMBER`, :data:`WHOLE`, :data:`TEXT`, :data:`FLAG`,
  :data:`FRACTION`, :func:`one_of`);
- :func:`list_of` an entry (each entry checked, named by its index: ``nll_per_image.3``);
- a nested shape (a JSON object with those fields); the key ``"*"`` applies to every value of the object (tables
  keyed by a label or a time);
- any of these wrapped in :func:`optional`: the field may be absent (and null, with ``null=True``, for fields the
  writer sets to None).

Numbers and null: the writer puts null in place of a non-finite float and lists its dotted path in the record's
``nonfinite`` field (:mod:`theory.engine.records`). So :data:`NUMBER` accepts null exactly where ``nonfinite``
lists it; anywhere else a null is a hand edit and is refused. (A record of the layout before the common fields,
which has no ``nonfinite``, is read as written: its nulls pass.)

Example:
    >>> shape = {"nll": NUMBER, "probe": optional({"max_ratio": NUMBER, "limit": NUMBER})}
    >>> shape_problems({"nll": 1.5, "probe": {"max_ratio": "big"}}, shape)
    ["probe.max_ratio = 'big' (expected a number)", "missing 'probe.limit'"]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from shared_embed.errors import DataError
from theory.engine.records import NONFINITE, Record, json_number, older_layout, read_cell

__all__ = [
    "FLAG",
    "FRACTION",
    "NUMBER",
    "TEXT",
    "WHOLE",
    "Expect",
    "ListOf",
    "OptionalField",
    "Shape",
    "list_of",
    "one_of",
    "optional",
    "read_shaped",
    "shape_by_record",
    "shape_problems",
]


@dataclass(frozen=True)
class Expect:
    """A test of one JSON value and what it expects, in words (``what``; ``many``: the plural, for a list of
    them). ``nonfinite``: a null passes where the record's ``nonfinite`` field lists its path (numbers)."""

    what: str
    test: Callable[[Any], bool]
    many: str = ""
    nonfinite: bool = False


@dataclass(frozen=True)
class ListOf:
    """A JSON list of ``item`` entries: ``length`` of them when given, else at least one unless not ``nonempty``."""

    item: Field
    nonempty: bool = True
    length: int | None = None

    @property
    def many(self) -> str:
        if self.length is not None:
            return f"lists of {self.length} {_many(self.item)}"
        return f"{'non-empty ' if self.nonempty else ''}lists of {_many(self.item)}"

    @property
    def what(self) -> str:
        return "a " + self.many.replace("lists", "list", 1)


@dataclass(frozen=True)
class OptionalField:
    """A field that may be absent (and null, with ``null``); present, it must be ``inner``."""

    inner: Field
    null: bool = False


#: what one field must be
Field = Union[Expect, ListOf, "Shape"]
#: field name -> Field or OptionalField (the key "*": every field of the object)
Shape = Mapping[str, Field | OptionalField]

NUMBER = Expect("a number", json_number, "numbers", nonfinite=True)
WHOLE = Expect("a whole number", lambda v: json_number(v, whole=True), "whole numbers")
TEXT = Expect("text", lambda v: isinstance(v, str), "texts")
FLAG = Expect("true or false", lambda v: isinstance(v, bool), "true or false values")
FRACTION = Expect("a number in [0, 1]", lambda v: json_number(v) and 0 <= v <= 1, "numbers in [0, 1]")


def optional(inner: Field, *, null: bool = False) -> OptionalField:
    """``inner``, or absent; or null too, with ``null=True`` (a field the writer sets to None)."""
    return OptionalField(inner, null)


def one_of(*values: str) -> Expect:
    """One of the texts ``values``."""
    listed = ", ".join(map(repr, values))
    return Expect(f"one of {listed}", lambda v: isinstance(v, str) and v in values, f"texts among {listed}")


def list_of(item: Field, *, nonempty: bool = True, length: int | None = None) -> ListOf:
    """A JSON list whose every entry is ``item``: ``length`` entries when given, else at least one unless
    ``nonempty=False``."""
    return ListOf(item, nonempty, length)


def _many(field: Field) -> str:
    return field.many if isinstance(field, (Expect, ListOf)) else "JSON objects"


def _what(field: Field) -> str:
    return field.what if isinstance(field, (Expect, ListOf)) else "a JSON object"


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


class _Nulls:
    """Which nulls stand for non-finite floats: the paths a record's ``nonfinite`` lists (every null for a record
    of the layout before the common fields, which has none)."""

    def __init__(self, record: Any) -> None:
        listed = record.get(NONFINITE) if isinstance(record, dict) else None
        self.paths = set(listed) if isinstance(listed, dict) else set()
        self.any = older_layout(record)

    def allowed(self, path: str) -> bool:
        return self.any or path in self.paths


def _field_problems(value: Any, want: Field, path: str, nulls: _Nulls) -> list[str]:
    """What keeps the present ``value`` at ``path`` from being ``want`` (a null: only a listed non-finite number)."""
    if value is None:
        number = isinstance(want, Expect) and want.nonfinite
        if number and nulls.allowed(path):
            return []
        listed = f", or null where {NONFINITE!r} lists it" if number else ""
        return [f"{path} = None (expected {_what(want)}{listed})"]
    if isinstance(want, Expect):
        return [] if want.test(value) else [f"{path} = {_short(value)} (expected {want.what})"]
    if isinstance(want, ListOf):
        bad_size = not isinstance(value, list) or (want.length is not None and len(value) != want.length)
        if bad_size or (want.nonempty and not value):
            return [f"{path} = {_short(value)} (expected {want.what})"]
        return [p for i, item in enumerate(value) for p in _field_problems(item, want.item, f"{path}.{i}", nulls)]
    return _object_problems(value, want, path, nulls)


def _object_problems(value: Any, shape: Shape, at: str, nulls: _Nulls) -> list[str]:
    if not isinstance(value, dict):
        return [f"{at or 'record'} = {_short(value)} (expected a JSON object)"]
    bad: list[str] = []
    for key, want in shape.items():
        for name in list(value) if key == "*" else [key]:
            path = f"{at}.{name}" if at else name
            inner = want.inner if isinstance(want, OptionalField) else want
            if name not in value:
                if not isinstance(want, OptionalField):
                    bad.append(f"missing {path!r}")
            elif not (value[name] is None and isinstance(want, OptionalField) and want.null):
                bad += _field_problems(value[name], inner, path, nulls)
    return bad


def shape_problems(record: Any, shape: Shape) -> list[str]:
    """What keeps ``record`` from having ``shape``, one phrase per field named by its dotted path (list entries by
    their index): ``missing 'a.b'``, ``a.b = 'x' (expected a number)``; [] when it has it."""
    return _object_problems(record, shape, "", _Nulls(record))


def shape_by_record(
    finished: Shape, *, reference: Shape | None = None, failed: Shape | None = None
) -> Callable[[Record], Shape | None]:
    """The ``shape_of`` of :func:`read_shaped` for a study's records: ``failed`` for a failed record (None: nothing
    beyond the common fields), ``reference`` for a finished one whose ``variant`` is ``"reference"`` (when given),
    ``finished`` for every other."""

    def shape_of(record: Record) -> Shape | None:
        if record.get("status", "ok") != "ok":
            return failed
        return reference if reference is not None and record.get("variant") == "reference" else finished

    return shape_of


def read_shaped(
    path: str | Path, what: str, shape_of: Callable[[Record], Shape | None], *, older: bool = False
) -> Record:
    """The record at ``path`` (:func:`theory.engine.records.read_cell`) whose finished content has the shape
    ``shape_of(record)`` gives (None: nothing beyond the common fields, e.g. for a failed record); DataError naming
    the file and up to three fields otherwise."""
    record = read_cell(path, what, older=older)
    shape = shape_of(record)
    bad = [] if shape is None else shape_problems(record, shape)
    if bad:
        raise DataError(f"{path} is not a readable {what}: {'; '.join(bad[:3])}")
    return record
