"""Choosing where a study's groups run: ``--executor local`` (the engine's own process pool), ``dask`` (a
dask.distributed cluster, :mod:`theory.engine.dask_executor`) or ``slurm`` (a SLURM job array through submitit,
:mod:`theory.engine.slurm_executor`).

dask and submitit are optional: ``pip install gentransfer[dask]`` / ``gentransfer[slurm]``. Asking for an
executor whose package is missing is a GentransferError that names the extra to install.
A dask LocalCluster's workers import the main script again, like the local pool's
(:func:`shared_embed.main_guard.check_main_guard`).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from shared_embed.errors import ConfigError, GentransferError
from shared_embed.main_guard import check_main_guard

if TYPE_CHECKING:  # an annotation only: choosing an executor needs no torch
    from theory.engine.loop import Executor

EXECUTORS = ("local", "dask", "slurm")
#: the executor's module and, for each package it needs, the extra that installs it
_NEEDS = {"dask": ("dask_executor", ("dask", "distributed")), "slurm": ("slurm_executor", ("submitit",))}


def executor_module(name: str) -> ModuleType:
    """The module of executor ``name`` (``dask`` or ``slurm``); an error naming the extra when its package is
    not installed."""
    module, packages = _NEEDS[name]
    try:
        return importlib.import_module(f"theory.engine.{module}")
    except ImportError as err:
        if (err.name or "").split(".")[0] not in packages:
            raise
        raise GentransferError(
            f"--executor {name} needs the package {err.name!r}, which is not installed: "
            f"pip install 'gentransfer[{name}]'"
        ) from err


def parse_options(pairs: list[str], what: str) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> ``{KEY: VALUE}``; a VALUE that reads as an int or a float becomes one."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not (sep and key.strip()):
            raise ConfigError(f"{what} takes KEY=VALUE (e.g. timeout_min=60), got {pair!r}")
        options[key.strip()] = _number(value.strip())
    return options


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


#: the address schemes of a dask scheduler (``tcp://HOST:PORT`` is the usual one)
SCHEDULER_SCHEMES = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


def check_scheduler(address: str) -> str:
    """``address`` when it reads as a dask scheduler's address (``tcp://HOST:PORT``); else a ConfigError."""
    scheme, sep, rest = address.strip().partition("://")
    host, colon, port = rest.rpartition(":")
    if not (sep and scheme in SCHEDULER_SCHEMES and (scheme == "inproc" or (host and colon and port.isdigit()))):
        raise ConfigError(
            f"--scheduler must be a dask scheduler's address such as tcp://10.0.0.5:8786 (schemes: "
            f"{', '.join(SCHEDULER_SCHEMES)}), got {address!r}"
        )
    return address.strip()


def check_threads(threads: int, what: str = "run.threads") -> int:
    """``threads`` when this machine has that many cores (``os.cpu_count()``); else a ConfigError (thousands of
    torch threads crash the process instead of running)."""
    cores = os.cpu_count() or 1
    if threads > cores:
        raise ConfigError(
            f"{what} = {threads}: this machine has {cores} core(s); torch threads per process must "
            f"be between 1 and {cores}"
        )
    return threads


def make_executor(
    name: str,
    *,
    workers: int,
    retries: int = 2,
    scheduler: str | None = None,
    slurm_folder: Path | None = None,
    slurm_cluster: str | None = None,
    slurm_options: dict[str, Any] | None = None,
) -> Executor | None:
    """The executor called ``name``, or None for ``local`` (the engine's own pool).

    Args:
        workers: dask: processes of the LocalCluster started here (ignored with ``scheduler``); slurm: jobs of
            the array running at once.
        retries: how many times a group whose worker (dask) or job (slurm) was lost is submitted again.
        scheduler: ``tcp://HOST:PORT`` of a running dask scheduler (dask only).
        slurm_folder: the job logs' folder (slurm only; required there).
        slurm_cluster: submitit's cluster: None picks SLURM where there is one, ``"local"`` runs the array as
            processes of this machine (to try a recipe out), ``"debug"`` in this process.
        slurm_options: submitit parameters, e.g. ``{"slurm_partition": "cpu", "timeout_min": 120}``.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if retries < 0:
        raise ConfigError(f"--retries must be >= 0, got {retries}")
    if scheduler is not None and name != "dask":
        raise ConfigError("--scheduler is an option of --executor dask")
    if name != "slurm" and (slurm_cluster is not None or slurm_options):
        raise ConfigError("--slurm and --slurm-cluster are options of --executor slurm")
    if scheduler is not None:
        check_scheduler(scheduler)
    if name == "local":
        return None
    module = executor_module(name)
    if name == "dask":
        if scheduler is None:
            check_main_guard("a dask LocalCluster's worker processes (--executor dask)")
        return module.DaskExecutor(scheduler=scheduler, workers=workers, retries=retries)
    if slurm_folder is None:
        raise ConfigError("--executor slurm needs a folder for the job logs")
    return module.SlurmExecutor(
        folder=slurm_folder, workers=workers, retries=retries, cluster=slurm_cluster, options=dict(slurm_options or {})
    )
