"""Benchmark: probability-flow log-likelihood throughput, exact divergence (torch.func and the d-pass loop) vs
Hutchinson, against dimension.

For d in {2, 8, 32, 64} and two score functions on the data law N(0, diag(v)), v evenly spaced in [0.5, 1.5]:

- ``head``: a DiffusionHead (width 64, 2 blocks) briefly trained (``--train-steps``) on draws of that law;
- ``analytic``: the exact noised score -x / (a_t^2 v + s_t^2), whose flow gives the exact density of
  x_{t_eps}, so the error of each estimate against the closed form is printed too. Its Jacobian is diagonal,
  so a Rademacher probe returns the trace exactly (v_i^2 = 1): here Hutchinson costs less but errs no more.

Each cell computes ``probability_flow`` (dopri5 at the head's default rtol = atol = 1e-5, t_eps = 1e-5) for
``--n`` points under ``torch.no_grad()`` with ``divergence="exact_loop"`` (the baseline: d separate
vector-Jacobian products per evaluation), ``"exact_func"`` (the same trace by ``torch.func``: the d products
batched by ``vmap`` into one backward pass), ``"exact"`` (the default: exact_func for n * d <= 4096, else the
loop) and ``"hutchinson"`` (one Rademacher probe), and reports
samples/s (process CPU time and wall), the NFE counted by ``diffusion.sampling.CountedScore`` and each
method's speed-up over the loop, measured in the same run. One JSON line goes to
``benchmarks/results/likelihood.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/likelihood.py
    OMP_NUM_THREADS=1 python benchmarks/likelihood.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from common import append_record, machine_line, table, time_call  # noqa: E402
from torch import Tensor

from diffusion import CountedScore, DiffusionHead, ScoreFn, VPSchedule, probability_flow  # noqa: E402
from shared_embed.train import TrainConfig, fit  # noqa: E402

DIVERGENCES = ("exact_loop", "exact_func", "exact", "hutchinson")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="d in {2, 8, 32}, 100 points, 200 training steps")
    p.add_argument("--dims", type=int, nargs="+", help="dimensions (default 2 8 32 64)")
    p.add_argument("--n", type=int, help="points per log-likelihood call (default 500)")
    p.add_argument("--train-steps", type=int, help="training steps of the head (default 500)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/likelihood.jsonl)")
    return p.parse_args(argv)


def variances(d: int) -> Tensor:
    return torch.linspace(0.5, 1.5, d)


def analytic_score(v: Tensor, schedule: VPSchedule) -> ScoreFn:
    """The exact score of x_t for x_0 ~ N(0, diag(v))."""

    def score(x: Tensor, t: Tensor, context: Tensor | None) -> Tensor:
        a2 = schedule.alpha(t).square()[:, None]
        return -x / (a2 * v + 1.0 - a2)

    return score


def exact_log_prob(x: Tensor, v: Tensor, schedule: VPSchedule, t_eps: float) -> Tensor:
    """log N(x; 0, a^2 diag(v) + s^2 I) at t_eps, the density the analytic flow integrates."""
    a2 = float(schedule.alpha(torch.tensor(t_eps)).square())
    var = a2 * v + 1.0 - a2
    return -0.5 * ((x.square() / var).sum(-1) + var.log().sum() + x.shape[1] * math.log(2 * math.pi))


def trained_head(d: int, steps: int) -> DiffusionHead:
    torch.manual_seed(0)
    head = DiffusionHead(d, None, width=64, blocks=2)
    x = torch.randn(4000, d) * variances(d).sqrt()
    fit(head, lambda b: head.loss(b[0]), (x,), config=TrainConfig(steps=steps, progress=False))
    return head


def measure(score: ScoreFn, x: Tensor, schedule: VPSchedule, divergence: str, rtol: float, t_eps: float) -> dict:
    counted = CountedScore(score)
    out: dict = {}

    def run() -> None:
        with torch.no_grad():
            out["res"] = probability_flow(
                counted, x, schedule, divergence=divergence, probes=1, rtol=rtol, atol=rtol, t_eps=t_eps
            )

    wall, cpu = time_call(run)
    res = out["res"]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "samples_per_cpu_s": x.shape[0] / cpu,
        "samples_per_wall_s": x.shape[0] / wall,
        "nfe": res.nfe,
        "score_calls": counted.calls,
        "log_prob": res.log_prob,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    dims = args.dims or ([2, 8, 32] if args.quick else [2, 8, 32, 64])
    n = args.n or (100 if args.quick else 500)
    steps = args.train_steps or (200 if args.quick else 500)
    rows, cells = [], []
    for d in dims:
        head = trained_head(d, steps)
        v = variances(d)
        x = torch.randn(n, d, generator=torch.Generator().manual_seed(1)) * v.sqrt()
        truth = exact_log_prob(x, v, head.schedule, head.t_eps)
        scores = {"head": head._score, "analytic": analytic_score(v, head.schedule)}
        for name, score in scores.items():
            res = {div: measure(score, x, head.schedule, div, head.rtol, head.t_eps) for div in DIVERGENCES}
            lps = {div: r.pop("log_prob") for div, r in res.items()}
            for div, r in res.items():
                r["mean_abs_vs_exact_div"] = float((lps[div] - lps["exact_loop"]).abs().mean())
                r["mean_abs_vs_truth"] = float((lps[div] - truth).abs().mean()) if name == "analytic" else None
                speed = r["samples_per_cpu_s"] / res["exact_loop"]["samples_per_cpu_s"]
                cells.append({"d": d, "score": name, "divergence": div, **r, "speedup_vs_exact_loop": speed})
                truth_err = "-" if r["mean_abs_vs_truth"] is None else f"{r['mean_abs_vs_truth']:.2e}"
                rows.append(
                    [
                        d,
                        name,
                        div,
                        r["samples_per_cpu_s"],
                        r["samples_per_wall_s"],
                        r["nfe"],
                        speed,
                        f"{r['mean_abs_vs_exact_div']:.3g}",
                        truth_err,
                    ]
                )
    print(machine_line())
    print(
        f"probability_flow, dopri5, rtol = atol = {head.rtol:g}, t_eps = {head.t_eps:g}, {n} points per call, "
        f"no_grad; head: DiffusionHead(width 64, 2 blocks) after {steps} training steps\n"
    )
    print(
        table(
            [
                "d",
                "score",
                "divergence",
                "samples/s (CPU)",
                "samples/s (wall)",
                "NFE",
                "speed-up vs exact_loop",
                "mean abs diff to exact_loop",
                "mean abs err to truth",
            ],
            rows,
        )
    )
    print("\nexact divergence, torch.func (exact_func) over the d-pass loop (exact_loop), samples/s by CPU time:")
    for c in cells:
        if c["divergence"] == "exact_func":
            print(f"  d = {c['d']:>3}, {c['score']:<8}: {c['speedup_vs_exact_loop']:.2f}x")
    record = {"quick": args.quick, "n": n, "train_steps": steps, "rtol": head.rtol, "t_eps": head.t_eps, "cells": cells}
    print(f"appended to {append_record('likelihood', record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
