"""What ``run`` does the same way for every study that takes no ``--shard`` / ``--device``: worker and thread
counts from the options or the config's ``run`` table, the executor, the first progress line, the report, timing.

A study's ``run(raw, out, options)`` is ``run_study_cells(raw, out, options, name=..., run_cells=..., report=...)``
with its own ``run_cells(raw, out, workers=, log=, executor=)`` and ``report(out) -> (path, table)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared_embed.errors import ConfigError
from theory.engine.executors import check_threads
from theory.engine.folder_lock import hold_folder
from theory.engine.study import RunOptions

__all__ = ["refuse_options", "run_study_cells"]


def refuse_options(kind: str, accepted: frozenset[str], options: RunOptions) -> None:
    """ConfigError naming a ``run`` option that the ``kind`` study does not take (``shard``, ``device``)."""
    given = {"shard": options.shard != "0/1", "device": options.device is not None}
    refused = sorted(name for name, used in given.items() if used and name not in accepted)
    if refused:
        listed = " and ".join(f"--{name}" for name in refused)
        raise ConfigError(
            f"{listed} {'is not an option' if len(refused) == 1 else 'are not options'} of a {kind} study"
        )


def run_study_cells(
    raw: dict[str, Any],
    out: Path,
    options: RunOptions,
    *,
    kind: str,
    run_cells: Callable[..., Any],
    report: Callable[[Path], tuple[Path, str]],
) -> int:
    """Run (or resume) a study's cells into ``out`` with ``options``, then its report; returns 0."""
    import torch

    refuse_options(kind, frozenset(), options)
    run = raw.get("run", {})
    workers = options.workers if options.workers is not None else run.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers (run.workers) must be a whole number >= 1, got {workers!r}")
    threads = run.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"run.threads must be a whole number >= 1, got {threads!r}")
    executor = options.executor
    torch.set_num_threads(check_threads(threads) if options.executor_name == "local" else threads)
    print(
        f"gentransfer run: {raw['experiment'].get('name', kind)} -> {out} ({workers} worker(s){options.where})",
        flush=True,
    )
    start = time.perf_counter()
    with hold_folder(out):
        run_cells(raw, out, workers=workers, log=options.log, executor=executor)
        if options.report:
            path, table = report(out)
            print(f"\n{table}\n\nReport: {path}")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0
