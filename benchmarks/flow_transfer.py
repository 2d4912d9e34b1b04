"""Benchmark: flow heads on the shared embedding, transfer vs no-transfer vs fine-tune vs oracle.

Runs ``configs/flow_transfer.toml`` through the engine (``theory.studies.transfer.experiments``) (default
conditional Gaussian task, n_s = 10,000, n_t in {50, 100, 200, 500, 1000}, seeds 0-2), prints KL(p_T || p_hat) ± SE across seeds and the
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

import torch
from common import RESULTS as RESULTS_DIR  # noqa: E402  (also puts the repository root on sys.path)
from common import add_grid_arguments, append_record, grid_overrides, print_grid_result  # noqa: E402

from theory.studies.transfer.experiments import experiment_config, run_transfer_experiment  # noqa: E402

RESULTS = RESULTS_DIR / "flow_transfer.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(p, RESULTS)
    p.add_argument("--backend", help="flow backend (zuko, nflows)")
    p.add_argument("--transform", help="flow transform (see flows.TRANSFORMS)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = grid_overrides(args)
    if args.backend:
        overrides.append(f"heads.flow.options.backend={args.backend}")
        if args.backend == "nflows" and not args.transform:
            overrides.append("heads.flow.options.transform=spline_ar")
    if args.transform:
        overrides.append(f"heads.flow.options.transform={args.transform}")
    config = experiment_config("flow_transfer", overrides, preset="quick" if args.quick else None)
    log = None if args.quiet else (lambda msg: print(msg, flush=True))
    result = run_transfer_experiment(config, log=log)
    head = config.heads["flow"].options
    print_grid_result(
        result,
        f"KL(p_T || p_hat) in nats, mean ± SE over seeds {config.grid.seeds}; n_s = {config.grid.n_s}; head {head}",
        config.evaluation.floor_n,
    )
    print(f"wall time: {result['seconds']:.0f} s")
    line = {
        "quick": args.quick,
        "config": "configs/flow_transfer.toml",
        "overrides": overrides,
        "seconds": result["seconds"],
        "summary": result["summary"],
        "ratio": result["ratio"],
        "records": result["records"],
    }
    print(f"appended to {append_record('flow_transfer', line, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
