"""The diffusion-head transfer experiment (the flow experiment's grid, run with diffusion heads).

Same grid and task as :mod:`theory.flow_experiment`: :class:`~theory.tasks.ConditionalGaussianTask`
(d_c = 16, d_h = 2, d_x = 2), n_s = 10,000, n_t in {50, 100, 200, 500, 1000}, seeds {0, 1, 2}, the four
variants, scored by the same KL estimator (``theory.kl``), for which a diffusion head's log-density comes from
the probability-flow ODE (exact divergence, dopri5). Used by the ``@slow`` test and by
``benchmarks/diffusion_transfer.py`` (the full grid took 1047 s on one thread).

Example:
    >>> result = run_diffusion_experiment(quick=True)
    >>> print(result["table"]); print(result["ratio"]["text"])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from diffusion import make_diffusion_head
from shared_embed.train import TrainConfig
from shared_embed.transfer import VARIANTS, TransferConfig

from .tasks import ConditionalGaussianTask
from .transfer_experiment import Log, grid_result, run_transfer_grid


def diffusion_transfer_config() -> TransferConfig:
    """Training settings for diffusion heads.

    Denoising score matching is a noisy loss that keeps improving long after a likelihood loss would have
    converged, so the phases are longer than the flow head's, and both evaluate the held-out 20% with one
    fixed noise draw (``evaluate_loss``) and keep the best weights. Source: 6000 steps at most, lr 2e-3,
    patience 10 evaluations of 100 steps. Target: 6000 steps at most, lr 1e-3, evaluated every 50 steps,
    patience 20. (Measured on seed 0 at n_t = 1000 against 3000 target steps at lr 2e-3, patience 20 x 25:
    no-transfer KL 1.68 -> 0.47, oracle 0.24 -> 0.10: the shorter schedule stopped far too early.)
    """
    return TransferConfig(
        embed_dim=2,
        encoder_hidden=(64, 64),
        source_train=TrainConfig(steps=6000, batch_size=256, lr=2e-3, eval_every=100, patience=10,
                                 description="source"),
        target_train=TrainConfig(steps=6000, batch_size=256, lr=1e-3, eval_every=50, patience=20,
                                 description="target"),
        val_fraction=0.2,
    )


@dataclass
class DiffusionExperiment:
    """The grid, the head's settings, the KL evaluation size and the embedding-floor sample (None: no split).

    ``rtol``/``atol`` of the head set the probability-flow solves of every KL evaluation.
    """

    n_s: int = 10_000
    n_t_list: Sequence[int] = (50, 100, 200, 500, 1000)
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = VARIANTS
    head: dict[str, Any] = field(default_factory=lambda: {
        "width": 64, "blocks": 2, "time_features": 32, "rtol": 1e-4, "atol": 1e-4})
    n_eval: int = 10_000
    floor_n: int | None = 20_000

    @classmethod
    def quick(cls) -> DiffusionExperiment:
        """A small version (about 4 minutes on one core): n_t in {50, 100, 1000}, one seed, 2000 KL pairs."""
        return cls(n_t_list=(50, 100, 1000), seeds=(0,), n_eval=2000, floor_n=None)


def run_diffusion_experiment(
    experiment: DiffusionExperiment | None = None,
    transfer_config: TransferConfig | None = None,
    *,
    quick: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run the grid; return records, the per-(variant, n_t) summary, the Markdown tables, the
    sample-efficiency ratio (n_t no-transfer needs to match transfer at n_t = 100, over 100) and the wall time."""
    exp = experiment or (DiffusionExperiment.quick() if quick else DiffusionExperiment())
    task = ConditionalGaussianTask(d_c=16, d_h=2, d_x=2)
    floor_train = TrainConfig(steps=4000, batch_size=512, lr=2e-3, eval_every=100, patience=10, description="floor")
    start = time.perf_counter()
    records = run_transfer_grid(
        task, make_diffusion_head(task.d_x, **exp.head), exp.n_s, exp.n_t_list, exp.seeds, exp.variants,
        transfer_config or diffusion_transfer_config(), n_eval=exp.n_eval, floor_n=exp.floor_n,
        floor_train=floor_train, log=log,
    )
    return grid_result(records, time.perf_counter() - start)
