"""What a finished cell record must hold before a report reads it: a study declares the shape, the reader checks it.

:func:`theory.engine.records.read_cell` checks the fields every record has; the rest of a record is the study's
own, and a report formats, subtracts and indexes it. A hand-edited or damaged field (``"nll": "1"``, a deleted
``switch``, ``"max_ratio": "big"``) would surface there as a bare TypeError or KeyError, or worse, as a number in
a table. So each study declares the shape of what its report reads, and its reader refuses a record that does
not have it, in one line naming the file and the field by its dotted path; the resume rule (``to_run(read=...)``)
uses the same reader, so a rerun of the same command recomputes exactly that cell.

A shape maps field names to what each must be:

- an :class:`Expect` (a test and its wording: :data:`NUMBER`, :data:`WHOLE`, :data:`TEXT`, :data:`FLAG`,
  :data:`FRACTION`, :func:`one_of`, :func:`list_of`);
- a nested shape (a JSON object with those fields); the key ``"*"`` applies to every value of the object (tables
  keyed by a label or a time);
- either wrapped in :func:`optional`: the field may be absent or null.

Numbers: a non-finite float is written as null (:mod:`theory.engine.records`), so :data:`NUMBER` accepts null and
never a boolean or text.

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
from theory.engine.records import Record, json_number, read_cell

__all__ = [
    "FLAG",
    "FRACTION",
    "NUMBER",
    "TEXT",
    "WHOLE",
    "Expect",
    "OptionalField",
    "Shape",
    "list_of",
    "one_of",
    "optional",
    "read_shaped",
    "shape_problems",
]


@dataclass(frozen=True)
class Expect:
    """A test of one JSON value and what it expects, in words (``what``; ``many``: the plural, for a list of them)."""

    what: str
    test: Callable[[Any], bool]
    many: str = ""


@dataclass(frozen=True)
class OptionalField:
    """A field that may be absent or null; present, it must be ``inner``."""

    inner: Expect | Mapping[str, Any]


#: field name -> Expect, nested Shape or OptionalField (the key "*": every field of the object)
Shape = Mapping[str, Union[Expect, OptionalField, "Shape"]]

NUMBER = Expect("a number", lambda v: v is None or json_number(v), "numbers")
WHOLE = Expect("a whole number", lambda v: json_number(v, whole=True), "whole numbers")
TEXT = Expect("text", lambda v: isinstance(v, str), "texts")
FLAG = Expect("true or false", lambda v: isinstance(v, bool), "true or false values")
FRACTION = Expect("a number in [0, 1]", lambda v: json_number(v) and 0 <= v <= 1, "numbers in [0, 1]")


def optional(inner: Expect | Shape) -> OptionalField:
    """``inner``, or absent, or null."""
    return OptionalField(inner)


def one_of(*values: str) -> Expect:
    """One of the texts ``values``."""
    listed = ", ".join(map(repr, values))
    return Expect(f"one of {listed}", lambda v: isinstance(v, str) and v in values, f"texts among {listed}")


def list_of(item: Expect, *, nonempty: bool = True, length: int | None = None) -> Expect:
    """A JSON list whose every entry is ``item``: ``length`` entries when given, else at least one unless
    ``nonempty=False``."""
    if length is not None:
        many = f"lists of {length} {item.many}"
    else:
        many = f"{'non-empty ' if nonempty else ''}lists of {item.many}"

    def test(v: Any) -> bool:
        if not isinstance(v, list) or (length is not None and len(v) != length) or (nonempty and not v):
            return False
        return all(item.test(x) for x in v)

    return Expect(f"a {many.replace('lists', 'list', 1)}", test, many)


def _short(value: Any, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def shape_problems(value: Any, shape: Shape, at: str = "") -> list[str]:
    """What keeps ``value`` from having ``shape``, one phrase per field named by its dotted path: ``missing 'a.b'``
    or ``a.b = 'x' (expected a number)``; [] when it has it."""
    if not isinstance(value, dict):
        return [f"{at or 'record'} = {_short(value)} (expected a JSON object)"]
    bad: list[str] = []
    for key, want in shape.items():
        for name in list(value) if key == "*" else [key]:
            path = f"{at}.{name}" if at else name
            maybe = isinstance(want, OptionalField)
            inner = want.inner if isinstance(want, OptionalField) else want
            if name not in value:
                if not maybe:
                    bad.append(f"missing {path!r}")
                continue
            field = value[name]
            if field is None and maybe:
                continue
            if isinstance(inner, Expect):
                if not inner.test(field):
                    bad.append(f"{path} = {_short(field)} (expected {inner.what})")
            else:
                bad += shape_problems(field, inner, path)
    return bad


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
