"""The ``gentransfer`` command line: run a theory-validation experiment from a TOML config, rebuild its report.

gentransfer run configs/default.toml --out runs/default          # sweep + report (resumes if interrupted)
gentransfer run configs/default.toml --out runs/x --set grid.seeds=[0] --set train.target.lr=3e-4
gentransfer report runs/default                                   # rebuild report.md from the records
gentransfer show configs/default.toml --set grid.n_t=[50,100]     # print the resolved config (TOML), run nothing
gentransfer run default --out runs/default                        # a shipped config by name (pip installs too)
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from shared_embed.errors import GentransferError
from theory.engine.config_files import read_config, resolve_config
from theory.engine.executors import EXECUTORS, make_executor, parse_options
from theory.engine.folder_lock import run_in_progress
from theory.engine.toml_writer import dumps as toml_dumps

if TYPE_CHECKING:  # the engine's loop loads torch: the commands import it when they run
    from theory.engine.loop import Executor

# torch and the rest of theory load inside the commands that need them: --help, --version and a missing or
# malformed config file answer without them (benchmarks/cli_startup.py).

DESCRIPTION = """\
gentransfer: transfer learning for generative models, checked against the theory.

An experiment fits, for every cell of a grid (source size n_s, target size n_t, seed, head, variant), a
generative model of the target task and scores it by KL(p_T || p_hat) against the exact density of a
synthetic task. Variants: transfer (encoder learned on the source, frozen; new head on the target),
no_transfer (everything learned on the target alone), fine_tune, oracle (the true embedding). The
report sets the measured KL curves beside the theory's predicted rates and checks its claims.

Quick start:
  gentransfer run configs/default.toml --out runs/default     (about 2 minutes on 2 cores)
  then read runs/default/report.md.

What a run writes into its --out folder:
  report.md     setup, predicted rates, KL tables, measured exponents, the checks table, plots
  plots/        kl_vs_nt_HEAD.png, floor_vs_ns_HEAD.png, samples_HEAD.png
  results.csv   one row per cell (KL, SE, floor, head term, timings, ...)
  cells/        one JSON record per cell (with the settings that produced it)
  checks.json   every check's verdict and numbers; config.json, the resolved config
  study.json    the study the folder belongs to (another study is refused); predictions.json, the exponents

Exit status: 0 done; 1 some cells failed (listed; the same command retries them); 2 any other error (one
line; GENTRANSFER_TRACEBACK=1 shows the traceback of an unexpected one); 130 Ctrl-C, 143 SIGTERM (finished
cells are kept: the same command resumes).
"""

PRESET_HELP = "merge the config's [presets.NAME] overlay, e.g. --preset smoke (before any --set)"

EPILOG = """\
Configs live in configs/ and ship with the package: default.toml (the main job), full.toml (the whole
study, flows and diffusion), dimension_laws.toml, tgdp_simulation.toml (the TGDP paper's simulation),
smoke.toml (seconds, for tests), digits.toml, digits_tgdp.toml and completion.toml (real 8x8 digits). Give a
path, or a shipped config's name (e.g. 'default'), which also works where gentransfer was installed with pip.
--preset NAME merges the config's [presets.NAME] overlay (e.g. 'digits --preset smoke', seconds; 'flow_transfer
--preset quick'). Any key can be overridden with --set section.key=value (TOML values: numbers, [lists],
"strings"; bare words are strings), e.g. --set grid.n_t=[50,100,200] --set run.workers=2.
An interrupted run resumes: run the same command again and finished cells are skipped.
Across hosts (one --out folder on a shared disk): --executor dask (a LocalCluster, or --scheduler
tcp://HOST:PORT) or --executor slurm (a job array through submitit), which retry a lost worker's groups; or,
with no extra package, give each host --shard I/N (I = 0..N-1, groups dealt by estimated cost), then
'gentransfer report DIR'.
"""


#: CPU-hours of estimated compute above which ``run`` asks for --yes (configs/full.toml: about 7)
MAX_HOURS = 24.0


def version() -> str:
    """The installed gentransfer's version ("unknown" when run from a tree that was never installed)."""
    try:
        return importlib.metadata.version("gentransfer")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gentransfer", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--version", action="version", version=f"gentransfer {version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run (or resume) an experiment, then write its report",
        description="Run every missing cell of CONFIG into --out, then write the report there.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", type=Path, help="experiment config (TOML), e.g. configs/default.toml or 'default'")
    run.add_argument("--out", type=Path, required=True, help="output folder (created; reused to resume)")
    run.add_argument("--preset", help=PRESET_HELP)
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set grid.seeds=[0,1] (repeatable)",
    )
    run.add_argument("--workers", type=int, help="parallel worker processes (default: run.workers of the config)")
    run.add_argument("--device", help="cpu, cuda, cuda:N, mps or auto (default: run.device of the config)")
    run.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="run only shard I of N of the grid's groups, e.g. 0/2 on one host and 1/2 on another "
        "(same --out folder, or copy the cells/ folders together), then 'report'",
    )
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="where the groups of cells run: local (this machine's worker processes, the default), "
        "dask (a dask.distributed cluster) or slurm (a SLURM job array through submitit)",
    )
    run.add_argument(
        "--scheduler",
        metavar="tcp://HOST:PORT",
        help="dask: a running scheduler's address (default: start a LocalCluster of --workers processes here)",
    )
    run.add_argument(
        "--retries",
        type=int,
        default=2,
        help="dask, slurm: times a group whose worker or job was lost is submitted again (default 2)",
    )
    run.add_argument(
        "--slurm",
        dest="slurm_options",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="slurm: a submitit parameter, e.g. --slurm slurm_partition=cpu --slurm timeout_min=120 (repeatable)",
    )
    run.add_argument(
        "--slurm-cluster",
        choices=("slurm", "local", "debug"),
        help="slurm: submitit's cluster (default: SLURM where there is one; 'local' runs the job "
        "array as processes of this machine)",
    )
    run.add_argument(
        "--yes",
        action="store_true",
        help=f"start a grid estimated at more than {MAX_HOURS:g} CPU-hours or of more than 10000 cells "
        "(without it such a run stops at once, printing the estimate)",
    )
    run.add_argument("--quiet", action="store_true", help="no per-cell progress lines")
    run.add_argument("--no-report", action="store_true", help="skip the report (build it later with 'report')")
    rep = sub.add_parser(
        "report",
        help="rebuild report.md, checks.json, results.csv and plots from a run folder",
        description="Rebuild DIR/report.md, checks.json, results.csv and plots/ from DIR's records.",
    )
    rep.add_argument("dir", type=Path, help="a folder written by 'gentransfer run'")
    rep.add_argument(
        "--task",
        metavar="MODULE:CLASS",
        help="the user task the folder's config names (task.name = 'MODULE:CLASS'): a report imports only code "
        "it is given here, never code named by the folder alone",
    )
    rep.add_argument(
        "--rate",
        metavar="MODULE:FUNCTION",
        help="import this rate function and use its predictions (a report never imports code named "
        "by the folder itself; by default it reads the predictions the run stored)",
    )
    show = sub.add_parser(
        "show",
        help="print the resolved config (after --set overrides) as TOML and exit",
        description="Print the resolved config as TOML (a runnable config: save it and 'run' "
        "it); --json prints JSON instead.",
    )
    show.add_argument("config", type=Path, help="a config path, or a shipped config's name, e.g. 'default'")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.add_argument("--preset", help=PRESET_HELP)
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def _check_out(out: Path) -> None:
    """``--out`` must be a folder this process can create and write into: one line saying why not."""
    if out.exists() and not out.is_dir():
        raise GentransferError(f"--out {os.fspath(out)!r} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GentransferError(f"--out {os.fspath(out)!r} cannot be created: {err.strerror}") from err
    if not os.access(out, os.W_OK | os.X_OK):
        raise GentransferError(f"--out {os.fspath(out)!r} is not writable")


def _raw_config(path: Path, preset: str | None, overrides: list[str]) -> dict:
    return read_config(resolve_config(path), preset, overrides)


def _executor(args: argparse.Namespace, workers: int) -> Executor | None:
    """The executor the options ask for (None: this machine's pool); a GentransferError naming a bad option."""
    return make_executor(
        args.executor,
        workers=workers,
        retries=args.retries,
        scheduler=args.scheduler,
        slurm_folder=Path(args.out).resolve() / "slurm",
        slurm_cluster=args.slurm_cluster,
        slurm_options=parse_options(args.slurm_options, "--slurm"),
    )


def _run(args: argparse.Namespace) -> int:
    """``gentransfer run``: the config checked by its study before the folder is touched, then the study's run."""
    raw = _raw_config(
        args.config, args.preset, args.overrides
    )  # a missing or malformed file: one line before torch loads
    from theory.engine.study import RunOptions, get_study, kind_of

    kind = kind_of(raw)  # an unknown kind: one line, still before torch loads
    from theory.engine.study_runs import refuse_options  # loads the engine (and torch)

    study = get_study(kind)
    resolved = study.resolved(raw)  # every setting checked before the folder is touched
    if args.workers is not None and args.workers < 1:
        raise GentransferError(f"--workers must be >= 1, got {args.workers}")
    workers = args.workers if args.workers is not None else resolved.get("run", {}).get("workers", 1)
    options = RunOptions(
        workers=args.workers,
        device=args.device,
        shard=args.shard,
        executor_name=args.executor,
        executor=_executor(args, workers),
        where=""
        if args.executor == "local"
        else f", executor {args.executor}" + (f" at {args.scheduler}" if args.scheduler else ""),
        max_hours=None if args.yes else MAX_HOURS,
        report=not args.no_report,
        log=None if args.quiet else (lambda m: print(m, flush=True)),
        config_file=os.fspath(args.config),
        preset=args.preset,
        overrides=tuple(args.overrides),
    )
    refuse_options(study.KIND, study.OPTIONS, options)
    _check_out(args.out)
    return study.run(raw, args.out, options)


def _report(args: argparse.Namespace) -> int:
    """``gentransfer report DIR``: the study the folder's config.json names rebuilds its report."""
    from theory.engine.run_folder import read_json
    from theory.engine.study import ReportOptions, get_study, kind_of

    if not args.dir.is_dir():
        raise GentransferError(
            f"{os.fspath(args.dir)!r} is not a folder written by 'gentransfer run' (it holds no config.json)"
        )
    busy = run_in_progress(args.dir)
    if busy:
        print(
            f"gentransfer: note: a run is in progress in {os.fspath(args.dir)!r} ({busy}); this report "
            "covers the cells finished so far",
            file=sys.stderr,
        )
    study = get_study(kind_of(read_json(args.dir / "config.json") or {}))
    print(study.report(args.dir, ReportOptions(rate=args.rate, task=args.task)))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gentransfer`` console script (and ``python -m theory``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    previous = _on_sigterm(_terminate)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "report":
            return _report(args)
        from theory.engine.study import get_study, kind_of

        raw = _raw_config(args.config, args.preset, args.overrides)
        resolved = get_study(kind_of(raw)).resolved(raw)
        print(json.dumps(resolved, indent=2) if args.json else toml_dumps(resolved), end="\n" if args.json else "")
        sys.stdout.flush()
        return 0
    except BrokenPipeError:
        # the reader left (``gentransfer show CONFIG | head``): stop quietly; point stdout at devnull so the
        # interpreter's final flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except GentransferError as err:
        print(f"gentransfer: error: {one_line(str(err))}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a folder that became read-only, ...: one line, not a traceback
        where = f" {err.filename!r}" if err.filename else ""
        print(f"gentransfer: error:{where} {one_line(str(err.strerror or err))}", file=sys.stderr)
        return 2
    except Terminated as err:
        print(
            f"gentransfer: stopped by {err.name}; finished cells are kept: run the same command again to resume",
            file=sys.stderr,
        )
        return 128 + err.signum
    except KeyboardInterrupt:
        print(
            "gentransfer: interrupted; finished cells are kept: run the same command again to resume", file=sys.stderr
        )
        return 130
    except Exception as err:  # noqa: BLE001 - every failure that is not a failed cell: exit 2, one line
        if os.environ.get("GENTRANSFER_TRACEBACK"):
            raise
        print(
            f"gentransfer: error: {type(err).__name__}: {one_line(str(err))} (an unexpected error: set "
            "GENTRANSFER_TRACEBACK=1 for the traceback)",
            file=sys.stderr,
        )
        return 2
    finally:
        _on_sigterm(previous)


class Terminated(KeyboardInterrupt):
    """A run stopped by a signal other than Ctrl-C (SIGTERM): unwinds like Ctrl-C, exits 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum, self.name = signum, signal.Signals(signum).name


def _on_sigterm(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM (in the main thread only; elsewhere Python cannot); returns the previous."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler if handler is not None else signal.SIG_DFL)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise Terminated(signum)


def one_line(text: str) -> str:
    """``text`` on one line: its first line, and its last when there are more (a traceback's error)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} ... {lines[-1]}"
