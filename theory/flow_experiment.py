"""The flow-head transfer experiment: settings, and one call that runs and summarises it.

Default task: :class:`~theory.tasks.ConditionalGaussianTask` (d_c = 16, d_h = 2, d_x = 2), n_s = 10,000
source pairs, n_t in {50, 100, 200, 500, 1000}, seeds {0, 1, 2}, the four variants, a zuko NSF head.
Used by the ``@slow`` test and by ``benchmarks/flow_transfer.py``.

Example:
    >>> result = run_flow_experiment(quick=True)
    >>> print(result["table"]); print(result["ratio"]["text"])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flows import make_flow_head
from shared_embed.train import TrainConfig
from shared_embed.transfer import VARIANTS, TransferConfig

from .tasks import ConditionalGaussianTask
from .transfer_experiment import Log, grid_result, run_transfer_grid


def flow_transfer_config() -> TransferConfig:
    """Training settings tuned for flow heads at small n_t.

    Source: 5000 steps at most, early stopping on the held-out 20% (patience 10 evaluations of 100 steps).
    Target: the loss on tens of pairs is minimised long before 2000 steps and then over-fitted, so the
    held-out 20% is evaluated every 20 steps, training stops after 15 evaluations without gain and the
    best weights are restored.
    """
    return TransferConfig(
        embed_dim=2,
        encoder_hidden=(64, 64),
        source_train=TrainConfig(steps=5000, batch_size=256, lr=1e-3, eval_every=100, patience=10,
                                 description="source"),
        target_train=TrainConfig(steps=2000, batch_size=256, lr=1e-3, eval_every=20, patience=15,
                                 description="target"),
        val_fraction=0.2,
    )


@dataclass
class FlowExperiment:
    """The grid: sample sizes, seeds, variants, the head's settings, the evaluation size and the size of
    the target sample that estimates the embedding floor of each source encoder (None: no KL split)."""

    n_s: int = 10_000
    n_t_list: Sequence[int] = (50, 100, 200, 500, 1000)
    seeds: Sequence[int] = (0, 1, 2)
    variants: Sequence[str] = VARIANTS
    head: dict[str, Any] = field(default_factory=lambda: {
        "backend": "zuko", "transform": "nsf", "transforms": 2, "hidden": (32, 32), "bins": 6})
    n_eval: int = 20_000
    floor_n: int | None = 50_000

    @classmethod
    def quick(cls) -> FlowExperiment:
        """A small version (about a minute on one core): n_t in {50, 100, 1000}, one seed."""
        return cls(n_t_list=(50, 100, 1000), seeds=(0,), n_eval=10_000, floor_n=20_000)


def run_flow_experiment(
    experiment: FlowExperiment | None = None,
    transfer_config: TransferConfig | None = None,
    *,
    quick: bool = False,
    log: Log | None = None,
) -> dict[str, Any]:
    """Run the grid; return records, the per-(variant, n_t) summary, the Markdown tables (KL per variant,
    and the transfer KL split), the sample-efficiency ratio and the wall time."""
    exp = experiment or (FlowExperiment.quick() if quick else FlowExperiment())
    task = ConditionalGaussianTask(d_c=16, d_h=2, d_x=2)
    start = time.perf_counter()
    records = run_transfer_grid(
        task, make_flow_head(task.d_x, **exp.head), exp.n_s, exp.n_t_list, exp.seeds, exp.variants,
        transfer_config or flow_transfer_config(), n_eval=exp.n_eval, floor_n=exp.floor_n, log=log,
    )
    return grid_result(records, time.perf_counter() - start)
