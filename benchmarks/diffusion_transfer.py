"""Benchmark: diffusion heads on the shared embedding, transfer vs no-transfer vs fine-tune vs oracle.

Runs ``configs/diffusion_transfer.toml`` through the engine (conditional Gaussian task, n_s = 10,000, n_t in
{50, 100, 200, 500, 1000}, seeds 0-2; KL by the probability-flow log-density on 10,000 target pairs per
seed), prints KL(p_T || p_hat) ± SE across seeds, the KL split of transfer and the sample-efficiency ratio
(the n_t no-transfer needs to match transfer at n_t = 100, over 100), and appends one JSON line to
``benchmarks/results/diffusion_transfer.jsonl``. A closing probe reports the probability-flow NFE and
seconds per 1000 log-densities of one fitted head.

Usage (from the repository root):
    python benchmarks/diffusion_transfer.py            # the full grid
    python benchmarks/diffusion_transfer.py --quick    # n_t in {50, 100, 1000}, one seed, 2000 KL pairs
    python benchmarks/diffusion_transfer.py --seeds 0 --n-eval 5000 --rtol 1e-5
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
from common import RESULTS as RESULTS_DIR  # noqa: E402  (also puts the repository root on sys.path)
from common import add_grid_arguments, append_record, grid_overrides, print_grid_result  # noqa: E402

from diffusion import make_diffusion_head, probability_flow  # noqa: E402
from shared_embed.transfer import fit_variants  # noqa: E402
from theory.engine.config import ExperimentConfig  # noqa: E402
from theory.studies.transfer.experiments import experiment_config, run_transfer_experiment  # noqa: E402
from theory.studies.transfer.sweep import transfer_config  # noqa: E402
from theory.truth.tasks import ConditionalGaussianTask  # noqa: E402

RESULTS = RESULTS_DIR / "diffusion_transfer.jsonl"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_grid_arguments(p, RESULTS)
    p.add_argument("--n-eval", type=int, help="KL evaluation pairs per seed")
    p.add_argument("--rtol", type=float, help="probability-flow solver rtol = atol (default 1e-4)")
    return p.parse_args(argv)


def nfe_probe(config: ExperimentConfig, n_t: int = 1000, n: int = 1000) -> dict[str, float]:
    """Probability-flow NFE and seconds for n target log-densities (exact divergence) of a no-transfer
    model fitted to n_t target pairs with the experiment's head and training settings."""
    task = ConditionalGaussianTask()
    gen = torch.Generator().manual_seed(99)
    torch.manual_seed(99)
    target = task.sample(n_t, "target", gen)
    head_factory = make_diffusion_head(task.d_x, **config.heads["diffusion"].options)
    model = fit_variants(head_factory, target, target, transfer_config(config, "diffusion", 99), ["no_transfer"])[
        "no_transfer"
    ].model
    data = task.sample(n, "target", gen)
    head = model.head
    with torch.no_grad():
        x, ctx = model.x_scaler(data.x), model.embed(data.c)
        start = time.perf_counter()
        res = probability_flow(
            head._score, x, head.schedule, context=ctx, rtol=head.rtol, atol=head.atol, t_eps=head.t_eps
        )
    return {"n": n, "n_t": n_t, "nfe": res.nfe, "seconds": time.perf_counter() - start, "rtol": head.rtol}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = grid_overrides(args)
    if args.n_eval:
        overrides.append(f"evaluation.n_eval={args.n_eval}")
    if args.rtol:
        overrides += [f"heads.diffusion.options.rtol={args.rtol}", f"heads.diffusion.options.atol={args.rtol}"]
    config = experiment_config("diffusion_transfer", overrides, preset="quick" if args.quick else None)
    log = None if args.quiet else (lambda msg: print(time.strftime("%H:%M:%S"), msg, flush=True))
    result = run_transfer_experiment(config, log=log)
    print_grid_result(
        result,
        f"KL(p_T || p_hat) in nats (probability-flow log-density, {config.evaluation.n_eval} "
        f"pairs per seed), mean ± SE over seeds {config.grid.seeds}; n_s = {config.grid.n_s}; head "
        f"{config.heads['diffusion'].options}",
        config.evaluation.floor_n,
    )
    probe = nfe_probe(config)
    print(
        f"probability-flow cost: NFE {probe['nfe']}, {probe['seconds']:.2f} s per {probe['n']} log-densities "
        f"of a no-transfer head fit to {probe['n_t']} pairs (rtol = atol = {probe['rtol']:g}, "
        f"{args.threads} thread(s))"
    )
    print(f"wall time: {result['seconds']:.0f} s")
    line = {
        "quick": args.quick,
        "config": "configs/diffusion_transfer.toml",
        "overrides": overrides,
        "seconds": result["seconds"],
        "summary": result["summary"],
        "ratio": result["ratio"],
        "nfe_probe": probe,
        "records": result["records"],
    }
    print(f"appended to {append_record('diffusion_transfer', line, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
