"""Benchmark: sampling throughput and peak memory of the SDE and ODE samplers at several batch sizes.

A DiffusionHead (d = 2, width 64, 2 blocks, briefly trained on a 2-D Gaussian) is sampled from x_1 ~ N(0, I) by
``sample_sde`` with each method of ``diffusion.sampling.SDE_METHODS`` (the head's default 500 uniform steps)
and by ``sample_ode`` (dopri5 at the head's default rtol = atol = 1e-5), under ``torch.no_grad()``. For each
sampler and batch size the table gives samples/s (process CPU time and wall), the number of score calls
(``CountedScore``) and the peak memory of the call: the rise of the process's peak resident set size (Linux
VmHWM, reset through /proc/self/clear_refs before each call after ``malloc_trim``; where that reset is
unavailable, the delta of ``resource.getrusage`` ru_maxrss, which only sees growth beyond the earlier peak).
torch allocates its tensors outside Python's allocator, so tracemalloc would miss them. One JSON line goes
to ``benchmarks/results/sampling.jsonl``.

Usage (from the repository root):
    OMP_NUM_THREADS=1 python benchmarks/sampling.py
    OMP_NUM_THREADS=1 python benchmarks/sampling.py --quick
"""

from __future__ import annotations

import argparse
import ctypes
import resource
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from common import append_record, machine_line, table, time_call  # noqa: E402

from diffusion import SDE_METHODS, CountedScore, DiffusionHead, sample_ode, sample_sde  # noqa: E402
from shared_embed.train import TrainConfig, fit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="batch sizes 100 and 1000, 200 training steps")
    p.add_argument("--batch-sizes", type=int, nargs="+", help="batch sizes (default 100 1000 10000)")
    p.add_argument("--train-steps", type=int, help="training steps of the head (default 500)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, help="JSON-lines file (default benchmarks/results/sampling.jsonl)")
    return p.parse_args(argv)


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_memory(fn: Callable[[], object]) -> tuple[float, float, float, str]:
    """(wall s, CPU s, peak memory rise in MiB, method) of one call of ``fn``."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        before, method = _status_kib("VmRSS"), "VmHWM"
    except OSError:
        before, method = None, "ru_maxrss"
    if before is None:
        before, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss"
    wall, cpu = time_call(fn)
    after = _status_kib("VmHWM") if method == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return wall, cpu, max(after - before, 0) / 1024, method


def trained_head(steps: int) -> DiffusionHead:
    torch.manual_seed(0)
    head = DiffusionHead(2, None, width=64, blocks=2)
    x = torch.randn(4000, 2) @ torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    fit(head, lambda b: head.loss(b[0]), (x,), config=TrainConfig(steps=steps, progress=False))
    return head


def _sde(score: Callable, x1: torch.Tensor, *, head: DiffusionHead, method: str) -> torch.Tensor:
    return sample_sde(score, x1, head.schedule, steps=head.sample_steps, method=method, t_eps=head.t_eps)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sizes = args.batch_sizes or ([100, 1000] if args.quick else [100, 1000, 10_000])
    head = trained_head(args.train_steps or (200 if args.quick else 500))
    samplers: dict[str, Callable] = {f"sde_{m}": partial(_sde, head=head, method=m) for m in SDE_METHODS}
    samplers["ode_dopri5"] = lambda s, x1: sample_ode(
        s, x1, head.schedule, rtol=head.rtol, atol=head.atol, t_eps=head.t_eps
    )
    with torch.no_grad():  # warm-up: first-call costs stay out of the figures
        for run in samplers.values():
            run(head._score, torch.randn(10, 2))
    rows, cells = [], []
    for n in sorted(sizes):
        for name, run in samplers.items():
            counted = CountedScore(head._score)
            x1 = torch.randn(n, 2, generator=torch.Generator().manual_seed(n))

            def call(run: Callable = run, counted: CountedScore = counted, x1: torch.Tensor = x1) -> None:
                with torch.no_grad():
                    run(counted, x1)

            wall, cpu, mib, method = peak_memory(call)
            cell = {
                "sampler": name,
                "n": n,
                "wall_s": wall,
                "cpu_s": cpu,
                "samples_per_cpu_s": n / cpu,
                "samples_per_wall_s": n / wall,
                "score_calls": counted.calls,
                "peak_mib": mib,
                "memory_method": method,
            }
            cells.append(cell)
            rows.append([name, n, n / cpu, n / wall, counted.calls, mib])
    print(machine_line())
    print(
        f"DiffusionHead(d=2, width 64, 2 blocks), SDE {head.sample_steps} steps, ODE dopri5 rtol = atol = "
        f"{head.rtol:g}, t_eps = {head.t_eps:g}; peak memory: rise of {cells[0]['memory_method']} during the call\n"
    )
    print(table(["sampler", "batch", "samples/s (CPU)", "samples/s (wall)", "score calls", "peak MiB"], rows))
    record = {"quick": args.quick, "sample_steps": head.sample_steps, "rtol": head.rtol, "cells": cells}
    print(f"appended to {append_record('sampling', record, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
