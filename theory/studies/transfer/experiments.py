"""The flow and diffusion transfer experiments as library calls: a shipped config, run by the one engine.

``run_flow_experiment()`` runs ``configs/flow_transfer.toml`` and ``run_diffusion_experiment()`` runs
``configs/diffusion_transfer.toml`` through :func:`theory.studies.transfer.sweep.run_sweep`, exactly what
``gentransfer run CONFIG --out DIR`` does: the same cells, seeds, data and records, whichever way it is called.
``overrides`` are ``--set`` assignments (``"grid.seeds=[0, 1]"``); ``preset="quick"`` merges the config's
``[presets.quick]`` overlay, its minute-long grid (one seed, three target sizes).

Example:
    >>> result = run_flow_experiment(preset="quick")
    >>> print(result["table"]); print(result["ratio"]["text"])
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared_embed.errors import DataError
from shared_embed.transfer import TransferConfig
from theory.engine.config import ExperimentConfig, load_config, resolve_config
from theory.engine.loop import Log
from theory.engine.run_folder import collect_records
from theory.studies.transfer.summary import grid_result
from theory.studies.transfer.sweep import run_sweep, transfer_config


def experiment_config(
    name: str | os.PathLike[str], overrides: Sequence[str] = (), *, preset: str | None = None
) -> ExperimentConfig:
    """The config of a shipped experiment (``"flow_transfer"``) or a TOML path, with its ``preset`` overlay
    (``[presets.NAME]``, e.g. ``"quick"``) and then ``overrides`` applied."""
    return load_config(resolve_config(Path(name)), list(overrides), preset=preset)


def run_transfer_experiment(
    config: ExperimentConfig,
    out: str | os.PathLike[str] | None = None,
    *,
    log: Log | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run ``config`` with the engine into ``out`` (a temporary folder when None) and return its result:
    records, the per-(variant, n_t) summary, the KL and KL-split tables, the sample-efficiency ratio and the
    wall time (:func:`theory.studies.transfer.summary.grid_result`). A failed cell is an error here."""
    scratch = tempfile.TemporaryDirectory(prefix="gentransfer-") if out is None else contextlib.nullcontext(out)
    with scratch as where:
        folder = Path(where)
        start = time.perf_counter()
        sweep = run_sweep(config, folder, workers=workers, log=log)
        seconds = time.perf_counter() - start
        if sweep.failures:
            raise DataError(f"{sweep.failed} cell(s) failed: " + "; ".join(sweep.failures))
        return grid_result(collect_records(folder), seconds)


def run_flow_experiment(
    overrides: Sequence[str] = (),
    *,
    preset: str | None = None,
    out: str | os.PathLike[str] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """``configs/flow_transfer.toml`` (zuko spline flows, n_s = 10,000, n_t 50..1000, 3 seeds, the four
    variants, the KL split of transfer): about 5 min on one core, a minute with ``preset="quick"``."""
    return run_transfer_experiment(experiment_config("flow_transfer", overrides, preset=preset), out, log=log)


def run_diffusion_experiment(
    overrides: Sequence[str] = (),
    *,
    preset: str | None = None,
    out: str | os.PathLike[str] | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """``configs/diffusion_transfer.toml`` (score heads, KL by the probability-flow ODE): about 18 min on one
    core, about 4 with ``preset="quick"``."""
    return run_transfer_experiment(experiment_config("diffusion_transfer", overrides, preset=preset), out, log=log)


def tuned_transfer_config(name: str | os.PathLike[str] = "flow_transfer", seed: int = 0) -> TransferConfig:
    """The workflow settings (encoder, tuned source and target training) of a shipped experiment's first head,
    seeded: what its cells train with, for code that runs the workflow by hand (the teaching demos)."""
    config = experiment_config(name)
    return transfer_config(config, config.grid.heads[0], seed)
