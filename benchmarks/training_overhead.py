"""Benchmark: training overhead of FlowHead + the shared loop (shared_embed.train.fit) against a plain loop.

For each backend (zuko ``nsf``, nflows ``spline_ar``; 2 layers, hidden (32, 32), 6 bins, as configs/default.toml)
the same flow (same seed, so the same initial weights) is trained on the same data, batch size, steps and
optimizer (Adam, lr 1e-3) three ways:

- ``plain``: a hand-written loop on the library's own flow module (``-flow(c).log_prob(x).mean()`` for zuko,
  ``-flow.log_prob(x, context=c).mean()`` for nflows): shuffle, slice, zero_grad, backward, step;
- ``toolkit``: ``fit(head, lambda b: head.loss(b[1], b[0]), (c, x), config)`` with a constant learning rate and
  no clipping, i.e. the same arithmetic plus what the toolkit adds per step (input checks, NaN/inf checks on
  the loss and the gradient norm, the scheduler, the loss history);
- ``toolkit_default``: the same with TrainConfig's defaults (cosine schedule, gradient clipping at 5).

The three run interleaved, ``--repeats`` times after a warm-up round; the table gives the median steps/s and
the ratio toolkit / plain (target: >= 0.90, i.e. within 10%), by process CPU time (the steadier clock on a
shared machine: waiting for a core does not count) and by wall time. One JSON line goes to
``benchmarks/results/training_overhead.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/training_overhead.py
    OMP_NUM_THREADS=1 python benchmarks/training_overhead.py --quick
    OMP_NUM_THREADS=1 python benchmarks/training_overhead.py --profile   # cProfile of one toolkit run
    git show HEAD:shared_embed/train.py > /tmp/train_old.py
    OMP_NUM_THREADS=1 python benchmarks/training_overhead.py --compare-train /tmp/train_old.py   # before/after
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import pstats
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
from common import append_record, machine_line, make_data, median, plain_train, table, time_interleaved  # noqa: E402
from torch import Tensor

from flows import FlowHead  # noqa: E402
from shared_embed.train import TrainConfig, fit  # noqa: E402

FLOWS = {
    "zuko": {"backend": "zuko", "transform": "nsf", "transforms": 2, "hidden": (32, 32), "bins": 6},
    "nflows": {"backend": "nflows", "transform": "spline_ar", "transforms": 2, "hidden": (32, 32), "bins": 6},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 steps, 3 repeats")
    p.add_argument("--steps", type=int, help="optimiser steps per timed run (default 400)")
    p.add_argument("--repeats", type=int, help="timed runs per variant (default 5)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--n", type=int, default=10_000, help="training pairs (default 10000)")
    p.add_argument("--backends", nargs="+", default=list(FLOWS), choices=list(FLOWS), help="flow backends")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--profile", action="store_true", help="print a cProfile of one toolkit run per backend")
    p.add_argument(
        "--compare-train",
        type=Path,
        metavar="PATH",
        help="another version of shared_embed/train.py, timed as 'toolkit_other' in the same run",
    )
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/training_overhead.jsonl)")
    return p.parse_args(argv)


def new_head(options: dict) -> FlowHead:
    torch.manual_seed(0)
    return FlowHead(2, 2, **options)


def plain_loss(head: FlowHead) -> Callable[[Tensor, Tensor], Tensor]:
    """The library's own negative log-likelihood of the flow inside ``head`` (no toolkit code on the path)."""
    flow = head.flow.flow
    if head.backend == "zuko":
        return lambda c, x: -flow(c).log_prob(x).mean()
    return lambda c, x: -flow.log_prob(x, context=c).mean()


def load_train(path: Path) -> ModuleType:
    """Another version of ``shared_embed/train.py`` as module ``shared_embed._train_other``."""
    spec = importlib.util.spec_from_file_location("shared_embed._train_other", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def runners(
    options: dict, c: Tensor, x: Tensor, steps: int, batch_size: int, other: ModuleType | None = None
) -> dict[str, Callable[[], None]]:
    """The training runs of one backend, each on a fresh head with the same initial weights."""
    same = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, schedule="constant", grad_clip=None, progress=False)
    default = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, progress=False)

    def plain() -> None:
        head = new_head(options)
        plain_train(head.flow.flow, plain_loss(head), c, x, steps, batch_size)

    def toolkit(config: TrainConfig, loop: Callable = fit) -> Callable[[], None]:
        def run() -> None:
            head = new_head(options)
            loop(head, lambda b: head.loss(b[1], b[0]), (c, x), config=config)

        return run

    runs = {"plain": plain, "toolkit": toolkit(same), "toolkit_default": toolkit(default)}
    if other is not None:
        runs["toolkit_other"] = toolkit(other.TrainConfig(**vars(same)), other.fit)
        runs["toolkit_other_default"] = toolkit(other.TrainConfig(**vars(default)), other.fit)
    return runs


def profile(run: Callable[[], None], top: int = 25) -> str:
    run()  # warm-up: lazy imports and first-call caches stay out of the profile
    prof = cProfile.Profile()
    prof.enable()
    run()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = args.steps or (100 if args.quick else 400)
    repeats = args.repeats or (3 if args.quick else 5)
    c, x = make_data(args.n)
    other = load_train(args.compare_train) if args.compare_train else None
    rows, results = [], {}
    for backend in args.backends:
        fns = runners(FLOWS[backend], c, x, steps, args.batch_size, other)
        if args.profile:
            print(f"--- cProfile of one toolkit run ({backend}, {steps} steps), by own time ---")
            print(profile(fns["toolkit"]))
        times = time_interleaved(fns, repeats=repeats, warmup=1)
        rates = {name: steps / median(ts["cpu"]) for name, ts in times.items()}
        wall_rates = {name: steps / median(ts["wall"]) for name, ts in times.items()}
        results[backend] = {
            "flow": FLOWS[backend],
            "seconds": times,
            "steps_per_cpu_s": rates,
            "steps_per_wall_s": wall_rates,
            "ratio_toolkit_plain": rates["toolkit"] / rates["plain"],
            "ratio_default_plain": rates["toolkit_default"] / rates["plain"],
            "ratio_toolkit_plain_wall": wall_rates["toolkit"] / wall_rates["plain"],
        }
        if other is not None:
            results[backend]["ratio_toolkit_other"] = rates["toolkit"] / rates["toolkit_other"]
            results[backend]["ratio_default_other"] = rates["toolkit_default"] / rates["toolkit_other_default"]
        for name in fns:
            rows.append(
                [
                    backend,
                    name,
                    rates[name],
                    1e3 / rates[name],
                    rates[name] / rates["plain"],
                    wall_rates[name],
                    wall_rates[name] / wall_rates["plain"],
                ]
            )
    print(machine_line())
    print(
        f"{steps} steps per run, batch {args.batch_size}, {args.n} pairs, median of {repeats} interleaved runs "
        "after one warm-up round; steps/s by process CPU time (steady on a shared machine) and by wall time\n"
    )
    print(
        table(
            [
                "backend",
                "loop",
                "steps/s (CPU)",
                "ms/step (CPU)",
                "ratio to plain (CPU)",
                "steps/s (wall)",
                "ratio to plain (wall)",
            ],
            rows,
        )
    )
    for backend, r in results.items():
        verdict = "within" if r["ratio_toolkit_plain"] >= 0.9 else "OUTSIDE"
        print(
            f"{backend}: toolkit/plain = {r['ratio_toolkit_plain']:.3f} ({verdict} the 10% target), "
            f"toolkit_default/plain = {r['ratio_default_plain']:.3f}"
        )
        if other is not None:
            print(
                f"{backend}: this loop / the loop of {args.compare_train} = {r['ratio_toolkit_other']:.3f} "
                f"(no clipping), {r['ratio_default_other']:.3f} (defaults)"
            )
    record = {
        "quick": args.quick,
        "compare_train": str(args.compare_train) if other else None,
        "steps": steps,
        "repeats": repeats,
        "batch_size": args.batch_size,
        "n": args.n,
        "results": results,
    }
    print(f"appended to {append_record('training_overhead', record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
