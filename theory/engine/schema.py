"""The one config validator: typed readers of TOML values, and a dataclass read from a table by its annotations.

Every study's config goes through here: its settings are dataclasses read by :func:`dataclass_from_table`, each
field checked by its annotation. A range or a special reader is stated once, in the annotation:
``n_eval: Annotated[int, Range(2, MAX_PAIRS)] = 20_000`` or ``n_t: Annotated[list[int], Reader(int_list,
minimum=2)]``; checks across fields live in the dataclass's ``__post_init__``. (The transfer study's ``[task]``
and ``[heads.NAME]`` tables, whose valid keys are a class's constructor arguments, use the same readers.) Each error is a
:class:`~shared_embed.errors.ConfigError` that names the key by its full path (``tgdp.n_targets[1]``), what
was expected and what was given.

Example:
    >>> dataclass_from_table(TGDPSettings, {"n_targets": [10, 100], "seeds": 3}, "tgdp")
    ConfigError: 'tgdp.seeds' must be a non-empty list of integers, got 3
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union

from shared_embed.errors import ConfigError
from shared_embed.train import TrainConfig
from shared_embed.validation import check_choice, check_fraction

T = TypeVar("T")

#: The largest sample size a config may ask for (pairs per cell, evaluation draws): 10^7 pairs of a 16 + 2
#: dimensional task are already 0.7 GB in float32; a larger value is a typo, refused before anything runs.
MAX_PAIRS = 10_000_000


def where_of(where: str, key: str) -> str:
    """The full path of ``key`` inside the table at ``where``."""
    return f"{where}.{key}" if where else key


def check_keys(table: dict[str, Any], valid: Sequence[str], where: str) -> None:
    """ConfigError naming the first key of ``table`` that is not in ``valid``, and the valid ones."""
    for key in table:
        if key not in valid:
            raise ConfigError(
                f"unknown key {where_of(where, key)!r}; valid keys of [{where or 'top level'}]: "
                f"{', '.join(sorted(valid))}"
            )


def table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where!r} must be a table, got {type(value).__name__} {value!r}")
    return value


def integer(value: Any, where: str, minimum: int | None = 1, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where!r} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{where!r} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{where!r} must be <= {maximum:.0e} (a sample size), got {value}")
    return value


def number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where!r} must be a number, got {value!r}")
    return float(value)


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where!r} must be a string, got {value!r}")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where!r} must be true or false, got {value!r}")
    return value


def int_list(value: Any, where: str, minimum: int = 1, maximum: int | None = None) -> list[int]:
    """A non-empty list of distinct integers (one integer is a list of one), sorted."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where!r} must be a non-empty list of integers, got {value!r}")
    out = [integer(v, f"{where}[{i}]", minimum, maximum) for i, v in enumerate(value)]
    if len(set(out)) != len(out):
        raise ConfigError(f"{where!r} has repeated values: {out}")
    return sorted(out)


def widths(value: Any, where: str, *, allow_empty: bool = False) -> list[int]:
    """Hidden-layer widths: a list of positive integers, order kept, repeats allowed; empty only when
    ``allow_empty`` (an encoder with no hidden layer is linear)."""
    if not isinstance(value, list) or not (value or allow_empty):
        raise ConfigError(f"{where!r} must be a non-empty list of layer widths, e.g. [64, 64], got {value!r}")
    return [integer(v, f"{where}[{i}]") for i, v in enumerate(value)]


def str_list(value: Any, where: str) -> list[str]:
    """A non-empty list of distinct strings (one string is a list of one), order kept."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where!r} must be a non-empty list of strings, got {value!r}")
    out = [string(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if len(set(out)) != len(out):
        raise ConfigError(f"{where!r} has repeated values: {out}")
    return out


def train_table(value: Any, where: str, valid: Sequence[str] | None = None) -> dict[str, Any]:
    """A table of :class:`~shared_embed.train.TrainConfig` fields (``valid``: the ones allowed; default all),
    checked by building one."""
    out = dict(table(value, where))
    check_keys(out, valid or [f.name for f in dataclasses.fields(TrainConfig)], where)
    try:
        TrainConfig(**out)
    except (ConfigError, ValueError, TypeError) as err:
        raise ConfigError(f"[{where}]: {err}") from err
    return out


def target_val_fractions(shares: dict[str, Any], heads: Sequence[str]) -> None:
    """Check a study's ``heads.NAME.target_val_fraction`` entries: ConfigError for a head kind outside ``heads``,
    DataError naming ``heads.NAME.target_val_fraction`` for a share outside [0, 0.9]."""
    for kind, share in shares.items():
        check_choice("target_val_fraction head", kind, heads)
        check_fraction(f"heads.{kind}.target_val_fraction", share, closed=True, high=0.9)


def fill_tables(given: dict[str, Any], defaults: dict[str, Any], levels: int = 1) -> dict[str, Any]:
    """``given`` with the entries of ``defaults`` it lacks, ``levels`` tables deep; a table given at the last level
    replaces its default whole (``fill_tables({"flow": {"source": s}}, DEFAULT_TRAIN, 2)`` keeps ``s`` as it is and
    adds flow's default target phase and every other head's phases). So a config that states a default and one
    that leaves it out give the same settings, and the same study fingerprint."""
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        default = out.get(key)
        if levels > 1 and isinstance(value, dict) and isinstance(default, dict):
            out[key] = fill_tables(value, default, levels - 1)
        else:
            out[key] = copy.deepcopy(value)
    return out


# -- checks stated in a field's annotation ---------------------------------------------------------------
@dataclass(frozen=True)
class Range:
    """``Annotated`` metadata: an int or float field within [minimum, maximum] (None: unbounded)."""

    minimum: float | None = None
    maximum: float | None = None

    def check(self, value: float, where: str) -> None:
        low = "" if self.minimum is None else f"{self.minimum:g}"
        high = "" if self.maximum is None else f"{self.maximum:g}"
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            bound = (
                f">= {low}" if self.maximum is None else f"<= {high}" if self.minimum is None else f"in [{low}, {high}]"
            )
            raise ConfigError(f"{where!r} must be {bound}, got {value}")


class Reader:
    """``Annotated`` metadata: read a field's value with ``function(value, where, **options)`` (one of the readers
    above, e.g. :func:`int_list`) instead of by its type."""

    def __init__(self, function: Callable[..., Any], **options: Any) -> None:
        self.function, self.options = function, options

    def __call__(self, value: Any, where: str) -> Any:
        return self.function(value, where, **self.options)


# -- a dataclass from its annotations -------------------------------------------------------------------
def dataclass_from_table(cls: type[T], raw: Any, where: str) -> T:
    """An instance of the dataclass ``cls`` from a TOML table: unknown keys refused, every value checked
    against its field's annotation (int, float, bool, str, sequences of these, tables, ``X | None``, and
    :class:`TrainConfig`, whose table overrides the field's default), then ``cls(**values)``, so the class's
    own ``__post_init__`` checks run last. Keys left out keep their defaults."""
    raw = table(raw, where)
    names = [f.name for f in dataclasses.fields(cls) if f.init]  # type: ignore[arg-type]
    check_keys(raw, names, where)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        required = f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in raw:
            raise ConfigError(f"[{where}] needs {f.name!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    default = _defaults(cls)
    values = {key: _read(hints[key], value, where_of(where, key), default.get(key)) for key, value in raw.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"[{where}]: {err}") from err


def _defaults(cls: type) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _read(hint: Any, value: Any, where: str, default: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        readers = [m for m in hint.__metadata__ if isinstance(m, Reader)]
        out = readers[0](value, where) if readers else _read(args[0], value, where, default)
        for meta in hint.__metadata__:
            if isinstance(meta, Range):
                meta.check(out, where)
        return out
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)] or [Any]
        return _read(inner, value, where, default)
    if hint is TrainConfig:
        base = default if isinstance(default, TrainConfig) else TrainConfig()
        return base.replace(**train_table(value, where))
    if hint is bool:
        return boolean(value, where)
    if hint is int:
        return integer(value, where, minimum=None)
    if hint is float:
        return number(value, where)
    if hint is str:
        return string(value, where)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where!r} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_read(item, v, f"{where}[{i}]", None) for i, v in enumerate(value))
    if origin is dict or hint is dict:
        return table(value, where)
    return value
