"""Benchmark: flow heads on the shared embedding, transfer vs no-transfer vs fine-tune vs oracle.

Runs the grid of ``theory.flow_experiment`` (default conditional Gaussian task, n_s = 10,000,
n_t in {50, 100, 200, 500, 1000}, seeds 0-2), prints KL(p_T || p_hat) +- SE across seeds and the
sample-efficiency ratio (the n_t no-transfer needs to match transfer at n_t = 100, over 100), and appends
one JSON line to ``benchmarks/results/flow_transfer.jsonl``.

Usage (from the repository root):
    python benchmarks/flow_transfer.py            # the full grid (~5 min on one core)
    python benchmarks/flow_transfer.py --quick    # n_t in {50, 100, 1000}, one seed
    python benchmarks/flow_transfer.py --backend nflows --transform spline_ar --seeds 0 1
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, replace
from pathlib import Path

import torch

from common import RESULTS as RESULTS_DIR  # noqa: E402  (also puts the repository root on sys.path)
from common import append_record  # noqa: E402

from theory.flow_experiment import FlowExperiment, run_flow_experiment  # noqa: E402

RESULTS = RESULTS_DIR / "flow_transfer.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small grid: n_t in {50, 100, 1000}, one seed")
    p.add_argument("--n-s", type=int, help="source sample size (default 10000)")
    p.add_argument("--n-t", type=int, nargs="+", help="target sample sizes")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds")
    p.add_argument("--backend", help="flow backend (zuko, nflows)")
    p.add_argument("--transform", help="flow transform (see flows.TRANSFORMS)")
    p.add_argument("--floor-n", type=int, help="target pairs for the embedding-floor head (0: no KL split)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON-lines file to append to")
    p.add_argument("--quiet", action="store_true", help="no per-cell log lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    exp = FlowExperiment.quick() if args.quick else FlowExperiment()
    changes: dict = {}
    if args.n_s:
        changes["n_s"] = args.n_s
    if args.n_t:
        changes["n_t_list"] = tuple(args.n_t)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.floor_n is not None:
        changes["floor_n"] = args.floor_n or None
    if args.backend or args.transform:
        head = dict(exp.head)
        if args.backend:
            head["backend"] = args.backend
            if args.backend == "nflows" and not args.transform:
                head["transform"] = "spline_ar"
        if args.transform:
            head["transform"] = args.transform
        changes["head"] = head
    exp = replace(exp, **changes)
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    result = run_flow_experiment(exp, log=log)
    print()
    print(f"KL(p_T || p_hat) in nats, mean +- SE over seeds {list(exp.seeds)}; n_s = {exp.n_s}; head {exp.head}")
    print(result["table"])
    if result["split_table"]:
        print(f"\nKL split of transfer (embedding floor: a head fit to {exp.floor_n} target pairs on the frozen "
              "source encoder):")
        print(result["split_table"])
    if result["ratio"] is not None:
        r = result["ratio"]
        print(f"sample-efficiency ratio (n_t no-transfer needs to match transfer at n_t=100, / 100): {r['text']}"
              f" (transfer KL at 100: {r['target_kl']:.4f})")
    print(f"wall time: {result['seconds']:.0f} s")
    line = {
        "quick": args.quick, "experiment": asdict(exp),
        "seconds": result["seconds"], "summary": result["summary"], "ratio": result["ratio"],
        "records": result["records"],
    }
    print(f"appended to {append_record('flow_transfer', line, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
