"""Benchmark: DiffusionHead training through the shared loop against a minimal plain PyTorch DSM loop.

The same ScoreNetwork (width 64, 2 blocks, 32 time features, as theory.studies.transfer.experiments; same seed, so the
same initial weights) is trained on the same data, batch size, steps and optimizer (Adam, lr 1e-3):

- ``plain``: a hand-written denoising-score-matching loop on ``head.net`` alone: t ~ U(t_eps, 1), x_t = a_t x
  + s_t e, e_hat = s_t (x_t + F(x_t, log(s_t / a_t), c)) (the head's residual form), loss mean (e_hat - e)^2;
- ``toolkit``: ``fit(head, lambda b: head.loss(b[1], b[0]), (c, x), config)``, constant lr and no clipping
  (the head adds input checks and stratified t; the loop adds NaN/inf checks, the scheduler, the history);
- ``toolkit_default``: TrainConfig's defaults (cosine schedule, gradient clipping at 5);
- ``loop_plain_loss``: the shared loop (as ``toolkit``) minimising the plain loop's DSM loss on ``head.net``,
  which splits the toolkit's overhead into the loop's part and the head's (``head.loss``) part.

Interleaved runs after a warm-up round, median steps/s by process CPU time and by wall time, and the ratio
toolkit / plain. One JSON line goes to ``benchmarks/results/diffusion_training.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/diffusion_training.py
    OMP_NUM_THREADS=1 python benchmarks/diffusion_training.py --quick
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from common import append_record, machine_line, make_data, median, plain_train, table, time_interleaved  # noqa: E402
from torch import Tensor

from diffusion import DiffusionHead  # noqa: E402
from shared_embed.train import TrainConfig, fit  # noqa: E402

HEAD = {"width": 64, "blocks": 2, "time_features": 32}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="300 steps, 3 repeats")
    p.add_argument("--steps", type=int, help="optimiser steps per timed run (default 1000)")
    p.add_argument("--repeats", type=int, help="timed runs per variant (default 5)")
    p.add_argument("--batch-size", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--n", type=int, default=10_000, help="training pairs (default 10000)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/diffusion_training.jsonl)")
    return p.parse_args(argv)


def new_head() -> DiffusionHead:
    torch.manual_seed(0)
    return DiffusionHead(2, 2, **HEAD)


def plain_dsm(head: DiffusionHead) -> Callable[[Tensor, Tensor], Tensor]:
    """The DSM loss written out on ``head.net`` (linear VP schedule, residual parameterisation)."""
    net, t_eps = head.net, head.t_eps
    b0, b1 = head.schedule.beta_min, head.schedule.beta_max

    def loss(c: Tensor, x: Tensor) -> Tensor:
        t = t_eps + (1.0 - t_eps) * torch.rand(x.shape[0])
        log_a = -0.5 * (b0 * t + 0.5 * t.square() * (b1 - b0))
        log_s = 0.5 * torch.log(-torch.expm1(2.0 * log_a))
        a, s = log_a.exp()[:, None], log_s.exp()[:, None]
        noise = torch.randn_like(x)
        x_t = a * x + s * noise
        eps = s * (x_t + net(x_t, log_s - log_a, c))
        return (eps - noise).square().mean()

    return loss


def plain_run(c: Tensor, x: Tensor, steps: int, batch_size: int) -> None:
    """The plain loop of ``common.plain_train`` on a fresh head with the plain DSM loss."""
    head = new_head()
    plain_train(head, plain_dsm(head), c, x, steps, batch_size)


def runners(c: Tensor, x: Tensor, steps: int, batch_size: int) -> dict[str, Callable[[], None]]:
    same = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, schedule="constant", grad_clip=None, progress=False)
    default = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, progress=False)

    def toolkit(config: TrainConfig) -> Callable[[], None]:
        def run() -> None:
            head = new_head()
            fit(head, lambda b: head.loss(b[1], b[0]), (c, x), config=config)

        return run

    def loop_only() -> None:
        head = new_head()
        loss = plain_dsm(head)
        fit(head.net, lambda b: loss(b[0], b[1]), (c, x), config=same)

    return {
        "plain": lambda: plain_run(c, x, steps, batch_size),
        "toolkit": toolkit(same),
        "toolkit_default": toolkit(default),
        "loop_plain_loss": loop_only,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    steps = args.steps or (300 if args.quick else 1000)
    repeats = args.repeats or (3 if args.quick else 5)
    c, x = make_data(args.n)
    times = time_interleaved(runners(c, x, steps, args.batch_size), repeats=repeats, warmup=1)
    cpu = {name: steps / median(ts["cpu"]) for name, ts in times.items()}
    wall = {name: steps / median(ts["wall"]) for name, ts in times.items()}
    rows = [
        [name, cpu[name], 1e3 / cpu[name], cpu[name] / cpu["plain"], wall[name], wall[name] / wall["plain"]]
        for name in times
    ]
    print(machine_line())
    print(
        f"DiffusionHead {HEAD}, d_x = 2, d_c = 2; {steps} steps per run, batch {args.batch_size}, {args.n} pairs, "
        f"median of {repeats} interleaved runs after one warm-up round\n"
    )
    print(
        table(
            [
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
    ratio = cpu["toolkit"] / cpu["plain"]
    print(
        f"toolkit/plain = {ratio:.3f} (CPU time), {wall['toolkit'] / wall['plain']:.3f} (wall); "
        f"toolkit_default/plain = {cpu['toolkit_default'] / cpu['plain']:.3f} (CPU time)"
    )
    print(
        f"loop only (same loss as plain): {cpu['loop_plain_loss'] / cpu['plain']:.3f}; head.loss on top of the "
        f"loop: {cpu['toolkit'] / cpu['loop_plain_loss']:.3f} (CPU time)"
    )
    record = {
        "quick": args.quick,
        "head": HEAD,
        "steps": steps,
        "repeats": repeats,
        "batch_size": args.batch_size,
        "n": args.n,
        "seconds": times,
        "steps_per_cpu_s": cpu,
        "steps_per_wall_s": wall,
        "ratio_toolkit_plain": ratio,
        "ratio_toolkit_plain_wall": wall["toolkit"] / wall["plain"],
        "ratio_default_plain": cpu["toolkit_default"] / cpu["plain"],
        "ratio_loop_only_plain": cpu["loop_plain_loss"] / cpu["plain"],
    }
    print(f"appended to {append_record('diffusion_training', record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
