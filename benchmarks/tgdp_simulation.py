"""Benchmark: the TGDP paper's simulation, TGDP vs target-only, fine-tuning and Domain Guidance.

Runs the grid of ``theory.studies.tgdp.experiment`` (TwoGaussianTask, n_s = 10,000, n_t in {10, 100, 1000}, seeds 0-2,
unconditional and label-conditional; KL by the probability-flow log-density on 2000 fresh target draws per
seed, MMD^2 of ODE samples, log-h errors of the guidance), prints the table (mean +- SE over seeds) and the
TGDP-vs-baseline comparisons, writes records, table and plots to ``--out-dir`` and appends one JSON line to
``benchmarks/results/tgdp_simulation.jsonl``.

Usage (from the repository root):
    python benchmarks/tgdp_simulation.py --out-dir runs/tgdp_sim            # the full grid
    python benchmarks/tgdp_simulation.py --quick                          # n_t in {10, 100}, one seed
    python benchmarks/tgdp_simulation.py --seeds 0 --n-t 10 --n-eval 1000
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch
from common import RESULTS as RESULTS_DIR  # noqa: E402  (also puts the repository root on sys.path)
from common import append_record  # noqa: E402

from theory.engine.config_files import read_config, resolve_config  # noqa: E402
from theory.studies.tgdp.experiment import compare, run_tgdp_experiment  # noqa: E402
from theory.studies.tgdp.settings import LEARNED  # noqa: E402
from theory.studies.tgdp.study import parse  # noqa: E402
from theory.truth.tasks import inside_support_task  # noqa: E402

RESULTS = RESULTS_DIR / "tgdp_simulation.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--quick", action="store_true", help="the config's [presets.quick] overlay: n_t in {10, 100}, one seed"
    )
    p.add_argument("--n-s", type=int, help="source sample size (default 10000)")
    p.add_argument("--n-t", type=int, nargs="+", help="target sample sizes")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds")
    p.add_argument("--n-eval", type=int, help="KL evaluation draws per seed")
    p.add_argument("--unconditional-only", action="store_true", help="skip the label-conditional version")
    p.add_argument("--conditional-only", action="store_true", help="skip the unconditional version")
    p.add_argument("--methods", nargs="+", help="methods to run (default: all)")
    p.add_argument(
        "--inside-support",
        action="store_true",
        help="the target inside the source's support: same modes, weights 0.9 / 0.1",
    )
    p.add_argument("--out-dir", type=Path, help="where records, table.md and the PNG plots go")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON-lines file to append to")
    p.add_argument("--quiet", action="store_true", help="no per-cell log lines")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    # the shipped study (configs/tgdp_simulation.toml), with its quick overlay when asked
    settings = parse(read_config(resolve_config(Path("tgdp_simulation")), "quick" if args.quick else None))[1]
    changes: dict = {}
    if args.n_s:
        changes["n_source"] = args.n_s
    if args.n_t:
        changes["n_targets"] = tuple(args.n_t)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    if args.n_eval:
        changes["n_eval"] = args.n_eval
    if args.unconditional_only:
        changes["conditional"] = (False,)
    if args.conditional_only:
        changes["conditional"] = (True,)
    if args.methods:
        changes["methods"] = tuple(args.methods)
    if args.inside_support:
        changes["task"] = {k: v for k, v in inside_support_task().config.items() if k != "name"}
    settings = replace(settings, **changes)
    result = run_tgdp_experiment(settings, out_dir=args.out_dir, progress=not args.quiet)
    print()
    print(
        f"KL(q || q_hat) in nats (probability-flow log-density, {settings.n_eval} fresh target draws per seed; "
        f"conditional: the joint (x, y)), MMD^2 ({settings.n_mmd} ODE samples, median-heuristic bandwidth), "
        f"log-h errors mean over t in {list(settings.times)}; mean +- SE over seeds {list(settings.seeds)}; "
        f"n_s = {settings.n_source}; Domain Guidance w = {settings.dg_weight}; tgdp_reg {settings.regularizers}"
    )
    print(result["table"])
    comparisons = []
    for cond in settings.conditional:
        for n_t in settings.n_targets:
            for method in LEARNED:
                for baseline in ("target_only", "fine_tune"):
                    if {method, baseline} <= set(settings.methods):
                        comparisons.append(compare(result["summary"], method, baseline, n_t, bool(cond)))
    for c in comparisons:
        print(
            f"{'cond' if c['conditional'] else 'uncond':6s} n_t {c['n_t']:4d} {c['method']:14s} vs "
            f"{c['baseline']:11s}: KL gap {c['gap']:+.4f} +- {c['se']:.4f} -> "
            f"{'beats by > 2 SE' if c['beats_2se'] else ('WORSE by > 2 SE' if c['worse_2se'] else 'no 2-SE win')}"
        )
    if result["plots"]:
        print("plots:", *result["plots"], sep="\n  ")
    print(f"wall time: {result['seconds']:.0f} s")
    summary = [{k: v for k, v in row.items()} for row in result["summary"]]
    line = {
        "quick": args.quick,
        "settings": settings.to_dict(),
        "threads": args.threads,
        "seconds": result["seconds"],
        "summary": summary,
        "comparisons": comparisons,
        "records": [{k: v for k, v in r.items() if k not in ("samples", "log_h_line")} for r in result["records"]],
    }
    print(f"appended to {append_record('tgdp_simulation', line, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
