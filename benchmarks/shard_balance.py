"""Benchmark: how evenly ``--shard I/N`` spreads a study's estimated cost, dealt round-robin (the old deal) and
by cost (``theory.studies.transfer.costs.deal_by_cost``, what ``--shard`` does now). Nothing is run: the costs come from the
config (``theory.studies.transfer.costs``).

``--calibrate`` measures the per-kind figures of ``theory.studies.transfer.costs.KIND_COSTS`` instead: it runs every head of the
config on a small grid (one seed, n_s = 500, n_t in {25, 800}, 60 steps per fit, 1000 evaluation pairs, 100
bound pairs; about a minute on one core) and fits, per head kind, a step's seconds as fixed + per-row from the
two batch sizes, the seconds per evaluation pair and per bound pair. One JSON line goes to
``benchmarks/results/shard_balance.jsonl``.

Usage (from the repository root):
    python benchmarks/shard_balance.py                              # configs/full.toml over 8 shards
    python benchmarks/shard_balance.py --config configs/default.toml --shards 4
    OMP_NUM_THREADS=1 python benchmarks/shard_balance.py --calibrate
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from common import ROOT, append_record, machine_line  # noqa: E402

from theory.engine.config import ExperimentConfig, load_config  # noqa: E402
from theory.studies.transfer.costs import KindCost, deal_by_cost, format_loads, group_cost, shard_loads  # noqa: E402
from theory.studies.transfer.sweep import collect_records, plan_cells, plan_groups, run_sweep  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "full.toml")
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--calibrate", action="store_true", help="measure the per-kind cost figures instead")
    return p.parse_args(argv)


def balance(config: ExperimentConfig, count: int) -> dict[str, object]:
    groups = plan_groups(plan_cells(config))
    deals = {
        "round-robin (old)": [k % count for k in range(len(groups))],
        "by cost (new)": deal_by_cost([group_cost(config, g) for g in groups], count),
    }
    out = {}
    for name, deal in deals.items():
        loads = shard_loads(config, groups, deal, count)
        print(f"\n{name}: {len(groups)} groups over {count} shards\n{format_loads(loads)}")
        out[name] = [{"cost_s": s.cost, "groups": s.groups, "cells_by_head": s.cells_by_head} for s in loads]
    return out


def calibrate(config: ExperimentConfig) -> dict[str, KindCost]:
    """Run the small grid (module doc) into a temporary folder; per-kind cost figures from its records."""
    raw = config.to_dict()
    raw["grid"].update(n_s=[500], n_t=[25, 800], seeds=[0])
    raw["train"] = {p: {**raw["train"][p], "steps": 60, "patience": 1000} for p in raw["train"]}
    raw["evaluation"].update(n_eval=1000, floor_n=2000, bound_n=100, sample_n=0)
    for head in raw["heads"].values():
        for key in ("n_eval", "floor_n", "bound_n"):
            head.pop(key, None)
    raw["run"].update(workers=1, threads=1)
    small = ExperimentConfig.from_dict(raw)
    with tempfile.TemporaryDirectory() as tmp:
        run_sweep(small, tmp, log=None)
        records = [r for r in collect_records(Path(tmp)) if r.get("status") == "ok"]
    batch = small.train_config(small.grid.heads[0], "target", 0).batch_size
    rows = {n_t: min(batch, (1 - small.encoder.val_fraction) * n_t) for n_t in (25, 800)}
    costs = {}
    for kind in sorted({r["head_kind"] for r in records}):
        mine = [r for r in records if r["head_kind"] == kind]
        per_step = {
            n_t: statistics.median(r["fit_seconds"] / max(r["steps"], 1) for r in mine if r["n_t"] == n_t)
            for n_t in rows
        }
        row_s = max((per_step[800] - per_step[25]) / (rows[800] - rows[25]), 0.0)
        scored = [r["eval_seconds"] / (r["n_eval"] * (2 if "floor_paired" in r else 1)) for r in mine]
        bound = [r["bound_seconds"] / (3 * r["bound_n"]) for r in mine if r.get("bound_n")]
        costs[kind] = KindCost(
            step_s=max(per_step[25] - rows[25] * row_s, 0.0),
            row_s=row_s,
            eval_s=statistics.median(scored),
            bound_s=statistics.median(bound) if bound else 0.0,
        )
    return costs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_config(args.config)
    shown = args.config.resolve().relative_to(ROOT) if args.config.resolve().is_relative_to(ROOT) else args.config
    print(machine_line())
    if args.calibrate:
        costs = calibrate(config)
        print(
            f"\nper-kind cost figures from a small run of {shown} (paste into theory.studies.transfer.costs.KIND_COSTS):"
        )
        for kind, c in costs.items():
            print(
                f'    "{kind}": KindCost(step_s={c.step_s:.1e}, row_s={c.row_s:.1e}, eval_s={c.eval_s:.1e}, '
                f"bound_s={c.bound_s:.1e}),"
            )
        record = {"mode": "calibrate", "config": str(shown), "costs": {k: asdict(c) for k, c in costs.items()}}
    else:
        record = {"mode": "balance", "config": str(shown), "shards": args.shards, "deals": balance(config, args.shards)}
    print(f"\nappended to {append_record('shard_balance', record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
