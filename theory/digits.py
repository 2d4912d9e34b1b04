"""Entry point of the digits few-shot transfer experiment: ``python -m theory.digits --out DIR``.

Reads an optional TOML file (the ``[digits]`` table of e.g. ``configs/digits.toml``; its keys are the fields
of :class:`~theory.real.digits_experiment.DigitsExperiment`), applies command-line overrides, runs the grid
and writes ``records.json``, ``table.md`` and ``digits_<head>_k<k>.png`` grids under ``--out``, printing
progress and the table.

Each head's results depend only on (seed, head, k, variant), not on which other heads run, so a grid can be
run head by head and the tables merged with ``--report``.

Examples:
    python -m theory.digits --out runs/digits --config configs/digits.toml
    python -m theory.digits --out runs/digits_flow --config configs/digits.toml --heads gaussian flow
    python -m theory.digits --report runs/digits_flow runs/digits_diffusion    # one table from several runs
    python -m theory.digits --out /tmp/tiny --tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from shared_embed.errors import ConfigError, GentransferError

from .real.digits_experiment import DigitsExperiment, run_digits_experiment
from .real.digits_report import format_table


def experiment_from_config(config: dict[str, Any]) -> DigitsExperiment:
    """A :class:`DigitsExperiment` from a parsed TOML document (its ``digits`` table, or the document itself)."""
    table = config.get("digits", config)
    if not isinstance(table, dict):
        raise ConfigError(f"the 'digits' entry must be a table, got {type(table).__name__}")
    known = set(DigitsExperiment.__dataclass_fields__)
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"unknown digits setting(s) {unknown}; valid: {sorted(known)}")
    return DigitsExperiment(**table)


def load_experiment(path: str | os.PathLike[str]) -> DigitsExperiment:
    """Read a TOML config file into a :class:`DigitsExperiment`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    with path.open("rb") as fh:
        return experiment_from_config(tomllib.load(fh))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m theory.digits", description=__doc__.splitlines()[0])
    p.add_argument("--out", help="output directory (records.json, table.md, PNG grids); required to run")
    p.add_argument("--report", nargs="+", metavar="DIR", help="print one table from the records.json of these runs")
    p.add_argument("--config", help="TOML file with a [digits] table")
    p.add_argument("--tiny", action="store_true", help="the seconds-long smoke run (tests)")
    p.add_argument("--heads", nargs="+", help="head kinds: gaussian, flow, diffusion")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds")
    p.add_argument("--per-class", type=int, nargs="+", help="target images per class")
    p.add_argument("--style", help="target style: invert, reflect, thicken")
    p.add_argument("--variants", nargs="*", help="shared-embedding variants: transfer, no_transfer, fine_tune")
    p.add_argument("--tgdp", action=argparse.BooleanOptionalAction, default=None,
                   help="run (or skip) the conditional TGDP variant of diffusion heads")
    p.add_argument("--no-source-only", action="store_true", help="skip the source_only rows")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return p.parse_args(argv)


def merged_table(dirs: list[str]) -> str:
    """The Markdown table of the records of several runs (their ``records.json``), e.g. one per head."""
    records, references = [], {}
    for d in dirs:
        path = Path(d) / "records.json"
        if not path.is_file():
            raise ConfigError(f"{path} does not exist: give folders written by 'python -m theory.digits --out'")
        payload = json.loads(path.read_text())
        records += payload["records"]
        for seed, ref in payload.get("reference", {}).items():
            references.setdefault(seed, ref)
    return format_table(records, references)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m theory.digits``: an error is one line on stderr and exit status 2."""
    try:
        return _main(argv)
    except GentransferError as err:
        print(f"theory.digits: error: {err}", file=sys.stderr)
    except (OSError, ValueError, KeyError, TypeError) as err:  # unreadable or malformed files, bad folders
        print(f"theory.digits: error: {type(err).__name__}: {err}", file=sys.stderr)
    return 2


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    if args.report:
        print(merged_table(args.report))
        return 0
    if not args.out:
        raise ConfigError("--out is required to run the experiment (or give --report DIR ...)")
    torch.set_num_threads(args.threads)
    if args.tiny:
        exp = DigitsExperiment.tiny(tuple(args.heads or ("gaussian",)), tgdp=bool(args.tgdp))
    else:
        exp = load_experiment(args.config) if args.config else DigitsExperiment()
    overrides = {"heads": args.heads, "seeds": args.seeds, "per_class": args.per_class, "style": args.style}
    overrides.update(variants=args.variants, tgdp=args.tgdp)
    changes = {k: v for k, v in overrides.items() if v is not None}
    if args.no_source_only:
        changes["source_only"] = False
    if changes:
        exp = DigitsExperiment(**{**exp.to_dict(), **changes})
    start = time.perf_counter()
    result = run_digits_experiment(exp, args.out, log=lambda m: print(m, flush=True))
    print(result["table"])
    print("grids:", *result["grids"], sep="\n  ")
    print(f"done in {time.perf_counter() - start:.0f}s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
