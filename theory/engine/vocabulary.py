"""One configuration vocabulary: the same table names for the same ideas in every study's config.

    [experiment]    kind, name, description
    [grid]          seeds; the target sizes (``n_t``: target pairs; ``per_class``: images per class of the image
                    studies); ``n_s``, the source size, where a study draws its source; ``heads``; ``variants``
                    (what each cell fits: transfer, no_transfer, ...; the TGDP study's methods)
    [heads.NAME]    ``options`` (the head constructor's keyword arguments) and ``train.PHASE`` (the fields of
                    :class:`shared_embed.train.TrainConfig` for the phase ``source``, ``target``, ...)
    [encoder]       ``embed_dim``, ``hidden``, ``val_fraction``
    [run]           ``workers``, ``threads`` (and ``device`` where the study takes one)
    [KIND]          what only that study has (its style, test sizes, TGDP options, ...)
    [presets.NAME]  overlays of all of the above (:mod:`theory.engine.config_files`)

The transfer study reads these tables itself (:mod:`theory.engine.config`). A cell study (digits, completion, TGDP)
keeps its settings in one dataclass, and its :class:`Vocabulary` says where each shared key lives in that
dataclass's table: :meth:`Vocabulary.fold` moves the shared tables into it before the one typed reader
(:func:`theory.engine.schema.dataclass_from_table`) checks it, and :meth:`Vocabulary.unfold` writes settings back
in the shared words (``config.json``, ``gentransfer show``). A shared idea written in the study's own table
(``[digits] seeds = ...``) is an error that names the shared key.

Example:
    >>> words = Vocabulary("digits", (("grid.seeds", "seeds"), ("heads.*.options", "head_options.*")))
    >>> words.fold({"grid": {"seeds": [0, 1]}, "heads": {"flow": {"options": {"transforms": 5}}}})
    {'seeds': [0, 1], 'head_options': {'flow': {'transforms': 5}}}
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from shared_embed.errors import ConfigError
from theory.engine.schema import table as as_table

__all__ = ["PER_CLASS_PATHS", "SHARED_TABLES", "Vocabulary"]

#: the tables whose keys mean the same in every study
SHARED_TABLES = ("grid", "heads", "encoder")
Path_ = tuple[str, ...]
#: the shared keys of a study whose grid counts target images per class and whose heads sit on a learned
#: encoder (digits, completion): where they live in its settings dataclass
PER_CLASS_PATHS: tuple[tuple[str, str], ...] = (
    ("grid.seeds", "seeds"),
    ("grid.per_class", "per_class"),
    ("grid.heads", "heads"),
    ("grid.variants", "variants"),
    ("heads.*.options", "head_options.*"),
    ("heads.*.train", "train.*"),
    ("heads.*.nll_rows", "nll_rows.*"),
    ("heads.*.target_val_fraction", "target_val_fraction.*"),
    ("encoder.embed_dim", "embed_dim"),
    ("encoder.hidden", "encoder_hidden"),
    ("encoder.val_fraction", "val_fraction"),
)


def _split(path: str) -> Path_:
    return tuple(path.split("."))


def _matches(pattern: Path_, path: Path_) -> bool:
    """Whether ``path`` is ``pattern`` ("*" matches any one key)."""
    return len(pattern) == len(path) and all(p in ("*", k) for p, k in zip(pattern, path))


@dataclass(frozen=True)
class Vocabulary:
    """Where the shared keys of a cell study's config live in its settings table ``[section]``.

    ``paths``: pairs (shared path, field path), dotted; ``*`` stands for a head's name in both
    (``("heads.*.options", "head_options.*")``). Shared keys the study has no field for are unknown keys."""

    section: str
    paths: tuple[tuple[str, str], ...]

    def _pairs(self) -> list[tuple[Path_, Path_]]:
        return [(_split(shared), _split(field)) for shared, field in self.paths]

    def fold(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The study's settings table: ``raw[section]`` with the shared tables' values moved in (a new dict).

        ConfigError naming the key: a shared idea written in ``[section]``; a key of a shared table that this
        study has no field for (with the keys it has)."""
        own = copy.deepcopy(as_table(raw.get(self.section, {}), self.section))
        fields = {field[0]: shared for shared, field in self._pairs()}
        for key in own:
            if key in fields:
                shared = ".".join(fields[key]).replace("*", "NAME")
                raise ConfigError(
                    f"{self.section}.{key} is a shared setting: write it as {shared} (the same words in every "
                    f"study's config)"
                )
        for name in SHARED_TABLES:
            if name in raw:
                self._take(as_table(raw[name], name), (name,), own)
        return own

    def _take(self, node: dict[str, Any], at: Path_, own: dict[str, Any]) -> None:
        """Move what the shared table ``node`` (at path ``at``) holds into ``own``; unknown keys are errors."""
        for key, value in node.items():
            path = (*at, key)
            hit = [(shared, field) for shared, field in self._pairs() if _matches(shared, path)]
            if hit:
                names = iter(k for p, k in zip(hit[0][0], path) if p == "*")
                target = [next(names) if part == "*" else part for part in hit[0][1]]
                _set(own, target, copy.deepcopy(value))
                continue
            deeper = [
                shared for shared, _ in self._pairs() if len(shared) > len(path) and _matches(shared[: len(path)], path)
            ]
            if deeper and isinstance(value, dict):
                self._take(value, path, own)
                continue
            valid = sorted({s[len(at)] for s, _ in self._pairs() if len(s) > len(at) and _matches(s[: len(at)], at)})
            raise ConfigError(
                f"unknown key {'.'.join(path)!r} in a {self.section} config; valid keys of "
                f"[{'.'.join(at)}]: {', '.join(v if v != '*' else 'a head name' for v in valid) or 'none'}"
                if not deeper
                else f"{'.'.join(path)!r} must be a table, got {value!r}"
            )

    @contextmanager
    def shared_names(self) -> Iterator[None]:
        """Re-raise a ConfigError of the study's reader with its keys in the shared words: a message about
        ``'digits.head_options.flow.bins'`` names ``'heads.flow.options.bins'``, the key the config holds."""
        try:
            yield
        except ConfigError as err:
            raise ConfigError(self.rename(str(err))) from err

    def rename(self, message: str) -> str:
        """``message`` with every settings-table path (``digits.seeds``, ``digits.train.flow.source``) written
        as its shared path (``grid.seeds``, ``heads.flow.train.source``)."""
        for shared, field in sorted(self.paths, key=lambda pair: -len(pair[1])):
            pattern = re.escape(f"{self.section}.{field}").replace(r"\*", r"([A-Za-z0-9_]+)")
            first, *rest = shared.split("*")
            replacement = first + "".join(f"\\g<{i}>{part}" for i, part in enumerate(rest, 1))
            message = re.sub(rf"(?<![\w.]){pattern}(?![\w])", replacement, message)
        return message

    def unfold(self, settings: dict[str, Any]) -> dict[str, Any]:
        """A config in the shared words from the study's settings table (``to_dict()``): the shared tables, and
        ``[section]`` with what is left."""
        own = copy.deepcopy(settings)
        out: dict[str, Any] = {}
        for shared, field in self._pairs():
            if field[0] not in settings:
                continue
            for names, value in _walk(settings, field):
                it = iter(names)
                _set(out, [next(it) if part == "*" else part for part in shared], copy.deepcopy(value))
            own.pop(field[0], None)
        return {**out, self.section: own}


def _set(node: dict[str, Any], path: list[str], value: Any) -> None:
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def _walk(node: Any, field: Path_, names: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every (names that fill the ``*``s, value) at ``field`` in ``node``."""
    if not field:
        return [(names, node)]
    if not isinstance(node, dict):
        return []
    head, rest = field[0], field[1:]
    if head == "*":
        return [hit for key, value in node.items() for hit in _walk(value, rest, (*names, key))]
    return _walk(node[head], rest, names) if head in node else []
