"""Benchmark: start-up of the ``gentransfer`` command line against a bare interpreter, in the same run.

Each case is a new process (start-up is what is measured): ``python -c pass`` (the baseline),
``python -m theory --version``, ``--help``, ``show`` of a missing config file (a config error) and
``python -c "import gentransfer"``; and, for scale, ``show smoke`` (a command that validates a config, which loads
torch). The cases run interleaved, round by round after a warm-up round; the table gives the median wall and
CPU seconds (the child's user + system time) of each, the same minus the baseline, and whether the target
(< 0.5 s wall) holds. One JSON line goes to ``benchmarks/results/cli_startup.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py
    OMP_NUM_THREADS=1 python benchmarks/cli_startup.py --quick
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, append_record, machine_line, median, table  # noqa: E402

TARGET_S = 0.5
CASES: dict[str, list[str]] = {
    "python -c pass (baseline)": ["-c", "pass"],
    "gentransfer --version": ["-m", "theory", "--version"],
    "gentransfer --help": ["-m", "theory", "--help"],
    "gentransfer show missing.toml": ["-m", "theory", "show", "missing.toml"],
    "import gentransfer": ["-c", "import gentransfer"],
    "gentransfer show smoke (loads torch)": ["-m", "theory", "show", "smoke"],
}
#: the cases the target applies to
TARGETED = ("gentransfer --version", "gentransfer --help", "gentransfer show missing.toml", "import gentransfer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="3 repeats")
    p.add_argument("--repeats", type=int, default=15, help="timed runs per case (default 15)")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/cli_startup.jsonl)")
    return p.parse_args(argv)


def run_once(args: list[str]) -> tuple[float, float]:
    """(wall seconds, child CPU seconds) of ``python ARGS`` run from the repository root."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def measure(repeats: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of every case, interleaved round by round after one warm-up round."""
    for argv in CASES.values():
        run_once(argv)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in CASES}
    for _ in range(repeats):
        for name, argv in CASES.items():
            wall, cpu = run_once(argv)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return {name: {"wall": median(t["wall"]), "cpu": median(t["cpu"])} for name, t in times.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    result = measure(repeats)
    base = result["python -c pass (baseline)"]
    rows = [
        [
            name,
            r["wall"],
            r["cpu"],
            r["wall"] - base["wall"],
            ("yes" if r["wall"] < TARGET_S else "NO") if name in TARGETED else "",
        ]
        for name, r in result.items()
    ]
    print(machine_line())
    print(f"{repeats} interleaved runs per case, medians in seconds; target: wall < {TARGET_S} s\n")
    print(table(["case", "wall s", "cpu s", "wall - baseline s", f"< {TARGET_S} s"], rows))
    path = append_record(
        "cli_startup",
        {"repeats": repeats, "seconds": result, "target_met": all(result[n]["wall"] < TARGET_S for n in TARGETED)},
        args.out,
    )
    print(f"\nrecord appended to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
