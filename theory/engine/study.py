"""The study protocol and the registry of studies: what ``gentransfer run``, ``report``, ``show`` and
:func:`~theory.engine.results.read_results` ask of a study, and how a config's ``[experiment] kind`` finds one.

A study is a module (or any object) with the attributes of :class:`Study`: its settings are read from a raw TOML
dict by :meth:`Study.resolved`; :meth:`Study.run` runs (or resumes) the cells of a config into a folder and writes
the report; :meth:`Study.report` rebuilds the report from the folder's records; :meth:`Study.records` reads them.
The engine owns what every study shares (the folder lock and fingerprint in :mod:`.run_folder` and
:mod:`.folder_lock`, the loop over groups of cells in :mod:`.loop`, the executors); a study holds its plan of cells,
what one cell computes and its report.

Shipped studies (:data:`SHIPPED`): ``transfer`` (KL grids on tasks with exact densities, dimension laws,
negative controls), ``tgdp`` (the TGDP simulation), ``digits`` (few-shot transfer on real 8x8 digits, c = the
label) and ``completion`` (real digits in the framework's own form: c = the top half, x = the bottom half). A user's
own study is added with :func:`register_study` (an object, or a ``"package.module"`` path imported when first
used)::

    register_study("my_study", "my_package.my_study")    # then: [experiment] kind = "my_study"

Looking a study up imports it (torch and its models), so the command line reads and checks the config file first.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from shared_embed.errors import ConfigError

__all__ = [
    "SHIPPED",
    "ReportOptions",
    "RunOptions",
    "Study",
    "get_study",
    "kind_of",
    "register_study",
    "study_kinds",
]

Record = dict[str, Any]


@dataclass(frozen=True)
class RunOptions:
    """How ``gentransfer run`` was asked to run a config (every field has the command line's default).

    ``workers`` / ``device``: None takes the config's ``run`` table; ``shard``: ``"I/N"``; ``executor``: the
    executor built from the options (:func:`theory.engine.executors.make_executor`; None: this machine's pool);
    ``max_hours``: a grid estimated above it stops before it starts (None: no limit); ``log``: progress lines
    (None: quiet); ``config_file``, ``preset`` and ``overrides`` are recorded in the folder's ``run.json``."""

    workers: int | None = None
    device: str | None = None
    shard: str = "0/1"
    executor_name: str = "local"
    executor: Any = None
    where: str = ""
    max_hours: float | None = None
    report: bool = True
    log: Callable[[str], None] | None = None
    config_file: str = ""
    preset: str | None = None
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReportOptions:
    """How ``gentransfer report`` was asked to rebuild a folder's report: ``rate`` (``MODULE:FUNCTION``, transfer
    grids) and ``task`` (``MODULE:CLASS``, the user task a folder names: a report imports only code it is given)."""

    rate: str | None = None
    task: str | None = None


@runtime_checkable
class Study(Protocol):
    """What the engine and the command line ask of a study (a module of these functions is one).

    - ``KIND``: the ``[experiment] kind`` it answers to; ``OPTIONS``: the ``run`` options it takes besides the
      common ones (``"shard"``, ``"device"``), refused with one line otherwise.
    - ``resolved(raw) -> dict``: the config with every default filled in; raises ConfigError naming a bad key.
    - ``run(raw, out, options) -> int``: run or resume the cells into ``out`` (holding its lock), write the
      report unless ``options.report`` is False; returns the exit status (0 done, 1 some cells failed).
    - ``report(out, options) -> str``: rebuild the report from the records; returns what to print.
    - ``records(out) -> list[dict]``: the folder's records, one flat dict per cell, strict JSON values.
    """

    KIND: str
    OPTIONS: frozenset[str]

    def resolved(self, raw: dict[str, Any]) -> dict[str, Any]: ...

    def run(self, raw: dict[str, Any], out: Path, options: RunOptions) -> int: ...

    def report(self, out: Path, options: ReportOptions) -> str: ...

    def records(self, out: Path) -> list[Record]: ...


#: kind -> the module that implements it (imported when first used)
SHIPPED: dict[str, str] = {
    "transfer": "theory.studies.transfer.study",
    "tgdp": "theory.studies.tgdp.study",
    "digits": "theory.studies.digits.study",
    "completion": "theory.studies.completion.study",
}
_REGISTRY: dict[str, str | Study] = dict(SHIPPED)


def register_study(kind: str, study: str | Study) -> None:
    """Make ``[experiment] kind = KIND`` run ``study``: an object with :class:`Study`'s attributes, or the
    dotted path of a module that has them (imported when first looked up). A shipped kind cannot be replaced."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ConfigError(f"kind must be a name (letters, digits, _), got {kind!r}")
    if kind in SHIPPED:
        raise ConfigError(f"kind {kind!r} is a shipped study; register yours under another name")
    if not isinstance(study, str | Study):
        raise ConfigError(
            f"study must be a module path or an object with {sorted(_members())}, got {type(study).__name__}"
        )
    _REGISTRY[kind] = study


def study_kinds() -> list[str]:
    """The kinds a config may name: the shipped studies and those registered in this process."""
    return list(_REGISTRY)


def kind_of(raw: dict[str, Any]) -> str:
    """The study kind a raw config names (``[experiment] kind``, default ``transfer``); ConfigError if unknown."""
    exp = raw.get("experiment", {})
    kind = exp.get("kind", "transfer") if isinstance(exp, dict) else "transfer"
    if kind not in _REGISTRY:
        raise ConfigError(f"experiment.kind = {kind!r} is not a study; valid: {', '.join(_REGISTRY)}")
    return str(kind)


def get_study(kind: str) -> Study:
    """The study registered as ``kind`` (importing its module on first use); ConfigError naming the valid kinds."""
    if kind not in _REGISTRY:
        raise ConfigError(f"experiment.kind = {kind!r} is not a study; valid: {', '.join(_REGISTRY)}")
    entry = _REGISTRY[kind]
    study: Any = importlib.import_module(entry) if isinstance(entry, str) else entry
    missing = sorted(m for m in _members() if not hasattr(study, m))
    if missing:
        raise ConfigError(f"the study registered as {kind!r} lacks {', '.join(missing)} (see theory.engine.study)")
    if study.KIND != kind:
        raise ConfigError(f"the study registered as {kind!r} says its KIND is {study.KIND!r}")
    return study


def _members() -> set[str]:
    return {"KIND", "OPTIONS", "resolved", "run", "report", "records"}
