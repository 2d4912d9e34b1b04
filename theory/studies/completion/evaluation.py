"""Scoring one fitted completion model on the held-out target images.

- NLL: -log p(y | c) of each test image's bottom half y (dequantised once, seeded) given its observed top half,
  nats per image in the pixel space [0, 17)^32: the model's log-density of the logits (a flow exactly, a
  diffusion head through its probability-flow ODE) plus the exact log-Jacobian; bits/dim over the 32 pixels.
  Per-image values are kept for paired comparisons.
- Completion fidelity: one completion is drawn for each of the first ``gen_rows`` test images; the whole image
  (true top half + generated bottom half) goes to a classifier trained on real target-style digits, which must
  name the digit. The real test images scored the same way are the ceiling (``real_fidelity``).
- Completion error: mean squared error (levels / 16) of the drawn bottom halves against the true ones.
- Completions for the PNG grid: ``grid_draws`` completions of each of the grid's test images, as integer levels.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import torch
from torch import Tensor

from theory.engine.seeding import derived_seed
from theory.studies.completion.task import (
    HALF,
    LEVELS,
    N_CLASSES,
    CompletionTask,
    condition,
    dequantize,
    log_abs_det,
    quantize,
    to_logit,
)
from theory.truth.metrics import FidelityClassifier, nll_summary


class CompletionModel(Protocol):
    """What scoring needs of a fitted model (a ConditionalModel)."""

    def eval(self) -> Any: ...
    def log_prob(self, x: Tensor, c: Tensor) -> Tensor: ...
    def sample(self, n: int, c: Tensor) -> Tensor: ...


def test_rows(task: CompletionTask, per_class: int) -> Tensor:
    """Rows (10 * per_class,) of ``task.test``: the first ``per_class`` test images of every class, class by class."""
    return torch.cat([torch.nonzero(task.test.labels == k).squeeze(1)[:per_class] for k in range(N_CLASSES)])


def fit_classifier(task: CompletionTask) -> FidelityClassifier:
    """Logistic regression on whole target-style digits (the source images redrawn in the target style)."""
    return FidelityClassifier().fit(task.classifier.levels.double() / (LEVELS - 1), task.classifier.labels)


def evaluate(
    model: CompletionModel,
    task: CompletionTask,
    clf: FidelityClassifier,
    *,
    seed: int,
    nll_rows: int | None,
    gen_rows: int,
    grid_rows: Tensor,
    grid_draws: int,
) -> dict[str, Any]:
    """Every metric of one model (module docstring); the record's fields, JSON-able."""
    start = time.perf_counter()
    model.eval()
    test = task.test
    n = len(test) if nll_rows is None else min(nll_rows, len(test))
    c = condition(test.top)
    y = dequantize(test.bottom, torch.Generator().manual_seed(derived_seed("completion", task.seed, "test-dequantise")))
    with torch.no_grad():
        log_p = torch.cat(
            [model.log_prob(to_logit(y[i : min(i + 150, n)]), c[i : min(i + 150, n)]) for i in range(0, n, 150)]
        ).double()
    log_p = log_p + log_abs_det(y[:n].double())
    nll_seconds = time.perf_counter() - start
    m = min(gen_rows, len(test))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            drawn = model.sample(m, c[:m])
            grid = model.sample(len(grid_rows) * grid_draws, c[grid_rows].repeat(grid_draws, 1))
    bottoms = quantize(drawn)
    whole = torch.cat([test.top[:m], bottoms], 1).double() / (LEVELS - 1)
    mse = float(((bottoms.double() - test.bottom[:m].double()) / (LEVELS - 1)).square().mean())
    return {
        **nll_summary(log_p, HALF),
        "nll_per_image": (-log_p).tolist(),
        "nll_seconds": nll_seconds,
        "fidelity": clf.accuracy(whole, test.labels[:m]),
        "completion_mse": mse,
        "n_generated": m,
        "nonfinite_samples": int((~torch.isfinite(drawn)).sum()),
        "grid_bottoms": quantize(grid).tolist(),
        "eval_seconds": time.perf_counter() - start,
    }


def real_fidelity(task: CompletionTask, clf: FidelityClassifier, gen_rows: int) -> float:
    """The classifier's accuracy on the first ``gen_rows`` real test images: the ceiling of completion fidelity."""
    m = min(gen_rows, len(task.test))
    return clf.accuracy(task.test.levels[:m].double() / (LEVELS - 1), task.test.labels[:m])
