"""Benchmark: wall time of one study run by the local executor and by dask (a LocalCluster), same machine, same
number of workers, in the same invocation: what dask's scheduling costs where it cannot gain anything.

Runs ``gentransfer run CONFIG --out <tmp> --no-report --quiet --workers W`` with ``--executor local`` and with
``--executor dask`` (each into a fresh folder, so no cell is resumed), alternating for ``--repeats`` rounds;
reports each wall time, the CPU time of the command and its processes, the load average around each run (the
machine may be shared), the ratio dask / local (median over rounds) and whether the two runs wrote the same
records (timings aside). One JSON line goes to ``benchmarks/results/executors.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/executors.py                # configs/default.toml, its run.workers
    OMP_NUM_THREADS=1 python benchmarks/executors.py --quick        # configs/smoke.toml (seconds)
    python benchmarks/executors.py --workers 2 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, append_record, machine_line, table  # noqa: E402

from theory.engine.config import load_config  # noqa: E402
from theory.engine.run_folder import untimed_cells  # noqa: E402

EXECUTORS = ("local", "dask")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="configs/smoke.toml instead of configs/default.toml")
    p.add_argument("--config", type=Path, help="another experiment config")
    p.add_argument("--workers", type=int, help="worker processes of both executors (default: run.workers)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of (local, dask) runs (default 1)")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/executors.jsonl)")
    return p.parse_args(argv)


def command(config: Path, out: Path, executor: str, workers: int) -> list[str]:
    script = Path(sys.executable).with_name("gentransfer")
    entry = [str(script)] if script.is_file() else [sys.executable, "-m", "theory"]
    return [
        *entry,
        "run",
        str(config),
        "--out",
        str(out),
        "--no-report",
        "--quiet",
        "--workers",
        str(workers),
        "--executor",
        executor,
    ]


def timed_run(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; its wall and CPU seconds (the command and every process it waited for), the 1-minute load
    average before and after."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "GENTRANSFER_QUIET": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode not in (0, 1):  # 1: some cells failed or were flagged; still a full run
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"{' '.join(cmd)} failed with exit status {proc.returncode}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "load_before": load,
        "load_after": os.getloadavg()[0],
        "returncode": proc.returncode,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = (args.config or ROOT / "configs" / ("smoke.toml" if args.quick else "default.toml")).resolve()
    workers = args.workers or load_config(config).run.workers
    tmp = Path(tempfile.mkdtemp(prefix="gentransfer_executors_"))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in EXECUTORS}
    same = True
    try:
        for round_ in range(args.repeats):
            found = {}
            for name in EXECUTORS:
                out = tmp / f"{name}{round_}"
                cmd = command(config, out, name, workers)
                print("running:", " ".join(cmd), flush=True)
                runs[name].append(timed_run(cmd))
                found[name] = untimed_cells(out)
            same = same and found["local"] == found["dask"] and bool(found["local"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    wall = {name: statistics.median(r["wall_s"] for r in runs[name]) for name in EXECUTORS}
    ratio = wall["dask"] / wall["local"]
    print(machine_line())
    shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
    print(
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}; config {shown}; {workers} worker(s) each; "
        f"{args.repeats} round(s)\n"
    )
    rows = [
        [name, k, r["wall_s"], r["cpu_s"], r["load_before"], r["load_after"]]
        for name in EXECUTORS
        for k, r in enumerate(runs[name])
    ]
    print(table(["executor", "round", "wall s", "CPU s (all processes)", "load before", "load after"], rows))
    print(f"\nwall dask / local (median over rounds): {ratio:.3f}; records identical: {same}")
    record = {
        "config": str(shown),
        "workers": workers,
        "repeats": args.repeats,
        "runs": runs,
        "wall_ratio_dask_over_local": ratio,
        "records_identical": same,
    }
    print(f"appended to {append_record('executors', record, args.out)}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
