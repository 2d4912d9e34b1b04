"""Benchmark report: false-pass and false-fail rates of the checks, over repeated negative-control studies.

Each repetition (fresh seeds and task instances) runs the correct pipeline and every broken pipeline of
``theory.verdicts.controls`` through the engine (``gentransfer``'s sweep and checks), and distorts the correct run's
records (every KL x3, x0.1, +0.05 nats, one NaN). It prints, per control, how often the check it is aimed at
did NOT fail (false pass) and, for the correct pipeline, how often any check FAILed (false fail), and appends
one JSON line to ``benchmarks/results/negative_controls.jsonl``. docs/checks.md quotes the latest line.

Usage (from the repository root):
    python benchmarks/negative_controls.py            # 20 repetitions, about 15 CPU-minutes
    python benchmarks/negative_controls.py --quick    # 3 repetitions
"""

from __future__ import annotations

import argparse
import tempfile
import time

from common import append_record, table  # noqa: E402

from theory.studies.transfer.control_runs import control_rates  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=20, help="repetitions of every study (default 20)")
    p.add_argument("--quick", action="store_true", help="3 repetitions")
    args = p.parse_args(argv)
    reps = 3 if args.quick else args.reps
    start, cpu = time.perf_counter(), time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        rates = control_rates(reps, tmp)
    rows = [(name, r["check"], r["kind"], f"{r['wrong']}/{r['reps']}", f"{r['rate']:.0%}") for name, r in rates.items()]
    print(table(["pipeline / records", "check aimed at", "wrong verdict counted", "count", "rate"], rows))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    print(f"{reps} repetitions in {seconds:.0f} s wall, {cpu_seconds:.0f} CPU-s")
    append_record(
        "negative_controls",
        {"reps": reps, "quick": args.quick, "rates": rates, "seconds": seconds, "cpu_seconds": cpu_seconds},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
