"""Benchmark: wall time of the README's main job, ``gentransfer run configs/default.toml --out <tmp>``.

Runs the command (the ``gentransfer`` console script next to this Python, else ``python -m theory``, the same
entry point) in a fresh temporary output folder, so no finished cell is resumed, and reports its wall time,
the CPU time of the command and its worker processes (``resource.getrusage(RUSAGE_CHILDREN)``), the number
of cells it wrote and whether the report appeared. ``--quick`` runs configs/smoke.toml instead. One JSON line
goes to ``benchmarks/results/main_job.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/main_job.py            # configs/default.toml (minutes)
    OMP_NUM_THREADS=1 python benchmarks/main_job.py --quick    # configs/smoke.toml (seconds)
    python benchmarks/main_job.py --config configs/full.toml --keep runs/bench_full
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, append_record, machine_line, table  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="configs/smoke.toml instead of configs/default.toml")
    p.add_argument("--config", type=Path, help="another experiment config")
    p.add_argument("--keep", type=Path, help="write the run here (must not exist) instead of a removed temp folder")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/main_job.jsonl)")
    return p.parse_args(argv)


def command(config: Path, out: Path) -> list[str]:
    script = Path(sys.executable).with_name("gentransfer")
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "theory"]
    return [*entry, "run", str(config), "--out", str(out), "--quiet"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = (args.config or ROOT / "configs" / ("smoke.toml" if args.quick else "default.toml")).resolve()
    if args.keep is not None and args.keep.exists():
        sys.exit(f"--keep {args.keep} exists; give a new folder so that no cell is resumed")
    tmp = None if args.keep else Path(tempfile.mkdtemp(prefix="gentransfer_main_job_"))
    out = args.keep or tmp / "run"  # type: ignore[operator]
    cmd = command(config, out)
    env = {**os.environ, "GENTRANSFER_QUIET": "1"}
    print("running:", " ".join(cmd), flush=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cells = len(list((out / "cells").rglob("*.json"))) if out.exists() else 0
    report = out / "report.md"
    has_report = report.is_file()
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        print(f"the main job failed with exit status {proc.returncode}")
    print(machine_line())
    shown = config.relative_to(ROOT) if config.resolve().is_relative_to(ROOT) else config
    print(f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; config {shown}\n")
    print(
        table(
            ["config", "exit", "wall s", "CPU s (all processes)", "CPU / wall", "cells", "report.md"],
            [[config.name, proc.returncode, wall, cpu, cpu / wall, cells, has_report]],
        )
    )
    record = {
        "quick": args.quick,
        "config": str(config),
        "command": cmd,
        "returncode": proc.returncode,
        "wall_s": wall,
        "cpu_s": cpu,
        "cells": cells,
        "report": has_report,
    }
    print(f"appended to {append_record('main_job', record, args.out)}")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
