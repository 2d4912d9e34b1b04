"""What every study that takes no ``--shard`` / ``--device`` does the same way: worker and thread counts from the
options or the config's ``run`` table, the executor, the first progress line, the report, timing
(:func:`run_study_cells`), and the ``run`` / ``report`` / ``records`` calls of :class:`theory.engine.study.Study`
built from a study's own pieces (:class:`CellStudy`).

Example (a study module)::

    _CELLS = CellStudy("digits", VOCABULARY, parse, fingerprint, run_digits_experiment, build_study_report, load)
    resolved, run, report, records = _CELLS.resolved, _CELLS.run, _CELLS.report, _CELLS.records
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared_embed.errors import ConfigError, DataError
from theory.engine.executors import check_threads
from theory.engine.folder_lock import hold_folder
from theory.engine.loop import Log
from theory.engine.records import FAILED, failed_lines
from theory.engine.run_folder import check_no_links, claim, read_json, write_json
from theory.engine.study import ReportOptions, RunOptions
from theory.engine.vocabulary import Vocabulary

__all__ = ["CellStudy", "refuse_options", "run_study_cells"]


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
    failures: Callable[[Path], list[str]] = lambda _out: [],
) -> int:
    """Run (or resume) a study's cells into ``out`` with ``options``, then its report; returns 0, or 1 when
    ``failures(out)`` lists failed cells (one line each, printed to stderr: a rerun retries them)."""
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
    failed = failures(out)
    if failed:
        print(f"gentransfer: {len(failed)} cell(s) failed (run the same command again to retry them):", file=sys.stderr)
        for line in failed:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class CellStudy:
    """The :class:`theory.engine.study.Study` calls of a study whose cells live under ``DIR/cells/``, from its own
    pieces: its ``vocabulary`` (where the shared config words live in its settings table,
    :class:`theory.engine.vocabulary.Vocabulary`); ``parse(raw) -> (experiment table, settings)`` (ConfigError
    naming a bad key);
    ``fingerprint(settings)``, what makes two runs one study (the grid axes a rerun may extend left out);
    ``experiment(settings, out, workers=, log=, executor=)``, its cells; ``build_report(out) -> (path, table)``;
    ``load(settings, out) -> records``; ``coordinates``, the record fields that name a cell (in failure lines). The
    engine's part is the same for every such study: the folder's lock, its
    links, its claim by the fingerprint and its ``config.json``."""

    kind: str
    vocabulary: Vocabulary
    parse: Callable[[dict[str, Any]], tuple[dict[str, Any], Any]]
    fingerprint: Callable[[Any], dict[str, Any]]
    experiment: Callable[..., Any]
    build_report: Callable[[Path], tuple[Path, str]]
    load: Callable[[Any, Path], list[dict[str, Any]]]
    coordinates: tuple[str, ...] = ("seed", "head", "variant")

    def resolved(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The config with every default filled in (what ``gentransfer show`` prints)."""
        exp, settings = self.parse(raw)
        run = {"run": raw["run"]} if "run" in raw else {}
        return {"experiment": exp, **self.vocabulary.unfold(settings.to_dict()), **run}

    def run_cells(
        self, raw: dict[str, Any], out: Path, *, workers: int = 1, log: Log | None = None, executor: Any = None
    ) -> Any:
        """Run (or resume) the config's cells into ``out``; refuses a folder that holds another study's results."""
        exp, settings = self.parse(raw)
        out.mkdir(parents=True, exist_ok=True)
        with hold_folder(out):
            check_no_links(out, ("cells",))
            claim(out, self.fingerprint(settings), any(out.glob("cells/*/*.json")))
            write_json(out / "config.json", {"experiment": exp, **self.vocabulary.unfold(settings.to_dict())})
            return self.experiment(settings, out, log=log, workers=workers, executor=executor)

    def run(self, raw: dict[str, Any], out: Path, options: RunOptions) -> int:
        """``gentransfer run``: every setting checked before the folder is touched, the cells, then the report."""
        self.parse(raw)
        return run_study_cells(
            raw,
            out,
            options,
            kind=self.kind,
            run_cells=self.run_cells,
            report=self.build_report,
            failures=self.failures,
        )

    def failures(self, out: Path) -> list[str]:
        """One line per failed cell of the folder: its coordinates and error."""
        return failed_lines([r for r in self.records(out) if r.get("status") == FAILED], self.coordinates)

    def report(self, out: Path, options: ReportOptions) -> str:
        """``gentransfer report``: rebuilds the report; returns the table and where the report is."""
        del options
        path, table = self.build_report(out)
        return f"{table}\n\nReport: {path}"

    def records(self, out: Path) -> list[dict[str, Any]]:
        """The folder's cell records as written (see :func:`theory.engine.results.read_results`)."""
        check_no_links(out, ("cells",))
        raw = read_json(out / "config.json")
        if raw is None or raw.get("experiment", {}).get("kind") != self.kind:
            raise DataError(f"{out} holds no {self.kind} config.json: is it a folder written by 'gentransfer run'?")
        return self.load(self.parse(raw)[1], out)
