"""The transfer grids (KL against n_t and n_s on tasks with exact densities, dimension laws, negative controls) as
a study of ``gentransfer run`` (:class:`theory.engine.study.Study`), the one study that takes ``--shard`` and
``--device``.

``run`` sweeps the missing cells into the folder (:func:`~theory.studies.transfer.sweep.run_sweep`), records how it
was run in ``run.json`` and writes the report with its checks (:func:`~theory.studies.transfer.report.build_report`).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from shared_embed.errors import ConfigError
from theory.engine.config import ExperimentConfig
from theory.engine.executors import check_threads
from theory.engine.folder_lock import hold_folder
from theory.engine.run_folder import collect_records, write_json
from theory.engine.study import ReportOptions, RunOptions
from theory.studies.transfer import sweep
from theory.studies.transfer.report import Report, build_report

__all__ = ["KIND", "OPTIONS", "format_report", "records", "report", "resolved", "run"]

#: the ``[experiment] kind`` this study answers to, and the ``run`` options it takes besides the common ones
KIND = "transfer"
OPTIONS: frozenset[str] = frozenset({"shard", "device"})


def resolved(raw: dict[str, Any]) -> dict[str, Any]:
    """The config with every default filled in (what ``gentransfer show`` prints); ConfigError naming a bad key."""
    return ExperimentConfig.from_dict(raw).to_dict()


def run(raw: dict[str, Any], out: Path, options: RunOptions) -> int:
    """Sweep the grid's missing cells into ``out`` and write the report: 0, or 1 when some cells failed."""
    import torch

    if options.device is not None:
        raw = {**raw, "run": {**raw.get("run", {}), "device": options.device}}
    config = ExperimentConfig.from_dict(raw)
    shard = sweep.parse_shard(options.shard)
    if options.workers is not None:
        config.run.workers = options.workers
    if config.run.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {config.run.workers}")
    executor = options.executor
    if options.executor_name == "local":
        check_threads(config.run.threads)
    torch.set_num_threads(config.run.threads)
    print(
        f"gentransfer run: {config.name} -> {out} ({config.run.workers} worker(s), "
        f"{config.run.threads} torch thread(s) each, device {config.run.device}"
        f"{'' if shard == (0, 1) else f', shard {options.shard}'}{options.where})",
        flush=True,
    )
    start = time.perf_counter()
    with hold_folder(out, shard):
        return _sweep_and_report(config, out, options, shard, executor, start)


def _sweep_and_report(
    config: ExperimentConfig, out: Path, options: RunOptions, shard: tuple[int, int], executor: Any, start: float
) -> int:
    """The sweep and its report, in a folder this process holds: 0, or 1 when some cells failed."""
    result = sweep.run_sweep(config, out, log=options.log, shard=shard, executor=executor, max_hours=options.max_hours)
    write_json(
        out / "run.json",
        {
            "config_file": options.config_file,
            "preset": options.preset,
            "overrides": list(options.overrides),
            "workers": config.run.workers,
            "executor": options.executor_name,
            "ran": result.ran,
            "skipped": result.skipped,
            "failed": result.failed,
            "seconds": result.seconds,
        },
    )
    print(
        f"sweep: {result.ran} cells run, {result.skipped} found on disk, {result.failed} failed, "
        f"{result.seconds:.0f} s; records in {out / 'cells'}, table {result.csv_path}",
        flush=True,
    )
    if options.report:
        print(format_report(build_report(out, config), out))
        print(f"total {time.perf_counter() - start:.0f} s")
    if result.flagged:
        print(
            f"gentransfer: warning: {len(result.flagged)} cell(s) flagged as doubtful (listed in the report):",
            file=sys.stderr,
        )
        for line in result.flagged:
            print(f"  {line}", file=sys.stderr)
    if result.failures:
        print(
            f"gentransfer: {len(result.failures)} cell(s) failed (run the same command again to retry them):",
            file=sys.stderr,
        )
        for line in result.failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def report(out: Path, options: ReportOptions) -> str:
    """Rebuild the report of a transfer folder from its records (see :func:`build_report`); returns what to print."""
    return format_report(build_report(out, rate=options.rate, user_task=options.task), out)


def records(out: Path) -> list[dict[str, Any]]:
    """The folder's cell records (every status) as written: strict JSON values, null for a non-finite float."""
    return collect_records(out, restore=False)


def format_report(report: Report, out: Path) -> str:
    """The tables, the checks' verdicts and the summary of a report, as ``gentransfer run`` prints them."""
    from theory.verdicts.checks import PASS

    lines: list[str] = []
    for name, table in report.tables.items():
        lines += ["", f"KL(p_T || p_hat) in nats, mean +- SE over seeds: {name}", table]
    lines += ["", "Checks:"]
    width = max((len(f"{c.name} [{c.scope}]") for c in report.checks), default=0)
    for c in report.checks:
        lines.append(f"  {f'{c.name} [{c.scope}]':<{width}}  {c.verdict.upper() if c.verdict != PASS else 'pass'}")
    lines += ["", "\n".join(line.removeprefix("- ").replace("**", "") for line in report.summary[2:] if line)]
    lines.append(f"Report: {report.path}  (plots in {os.path.join(out, 'plots')})")
    return "\n".join(lines)
