"""Scoring one fitted digits model: held-out NLL in pixel space, conditional fidelity, MMD^2 and W1.

- NLL: -log p_y(y) of the held-out target test images in the dequantised pixel space [0, 17)^64 (one seeded
  U[0, 1) draw per image; :mod:`theory.studies.digits.pixels` for the convention), nats per image and bits/dim. A flow
  gives it exactly; a diffusion head through its probability-flow ODE (its own divergence settings).
- Fidelity: ``gen_per_class`` images are generated for each label; the fidelity classifier (trained on real
  target-style digits) must recognise the requested label; accuracy overall and per class.
- MMD^2 and W1 between the generated images and the held-out test images, both as levels / 16 in [0, 1]^64:
  unbiased MMD^2 with a Gaussian kernel at the median-heuristic bandwidth, exact W1 (Euclidean cost, POT).
- Copying (given the model's target training images): :func:`theory.truth.metrics.copying` of the generated
  images against those training images, measured by the test images, in the same features. MMD^2 and W1 against
  a hundred-odd test images reward a model that replays its few training images (they are target images too);
  ``closer_fraction`` is 1/2 for fresh draws of the target, above it for draws crowding the training images
  (1 for replays; ``distance_ratio`` near 0 for replays, near 1 for draws merely concentrated toward them).

With ``sample_options`` (a head's call-time sampling settings, e.g. a flow's ``temperature``) the samples are
drawn with them and scored as above, and the same metrics of samples drawn with the head's default settings
(the fitted density itself) are kept beside them under ``default_sampling``, so neither hides the other.

Generated logits are decoded to integer levels by :meth:`LogitPixels.levels_from_logit` (floor, clamped to
0..16); non-finite draws (none expected) are counted and decoded as 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from theory.studies.digits.task import N_CLASSES, D, DigitsTask, LabelledImages, level_features
from theory.truth.metrics import FidelityClassifier, copying, mmd2, nll_summary, wasserstein


class DigitsModel(Protocol):
    """What scoring needs of a fitted model (a ConditionalModel, or TGDP's composed-score model)."""

    def eval(self) -> Any: ...
    def log_prob(self, x: Tensor, c: Tensor) -> Tensor: ...
    def sample(self, n: int, c: Tensor) -> Tensor: ...


@dataclass
class TestSet:
    """The held-out target test images, dequantised once: levels, labels, c (n, 10), y and z (n, 64)."""

    images: LabelledImages
    c: Tensor
    y: Tensor
    z: Tensor

    @classmethod
    def build(cls, task: DigitsTask, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> TestSet:
        images = task.splits.target_test
        y = task.pixels.dequantize(images.levels, generator, dtype=dtype)
        return cls(images, images.one_hot(dtype), y, task.pixels.to_logit(y)[0])

    @property
    def features(self) -> Tensor:
        return level_features(self.images.levels)


def pixel_log_prob(
    model: DigitsModel, task: DigitsTask, test: TestSet, rows: int | None = None, batch_size: int = 300
) -> Tensor:
    """log p_y (rows,) of the first ``rows`` test images (all when None), float64.

    Under ``torch.no_grad``: a diffusion head's probability-flow likelihood then takes its divergence on a
    detached copy (no graph kept), which is what evaluation wants.
    """
    n = len(test.images) if rows is None else min(rows, len(test.images))
    out = []
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        with torch.no_grad():
            lp = model.log_prob(test.z[sl], test.c[sl])
        out.append(task.pixels.pixel_log_prob(lp.double(), test.y[sl].double()))
    return torch.cat(out)


def generate_levels(
    model: DigitsModel,
    task: DigitsTask,
    labels: Tensor,
    seed: int,
    dtype: torch.dtype = torch.float32,
    sample_options: dict[str, Any] | None = None,
) -> tuple[Tensor, int]:
    """Integer images (n, 64) drawn for ``labels`` (n,) with the head's ``sample_options`` (None: its defaults;
    a model whose ``sample`` takes no options, such as TGDP's, must get None), and the number of non-finite
    generated values."""
    c = torch.nn.functional.one_hot(labels, N_CLASSES).to(dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            z = model.sample(len(labels), c, **(sample_options or {}))
    bad = int((~torch.isfinite(z)).sum())
    z = torch.nan_to_num(
        z, nan=task.pixels.z_bounds[0], posinf=task.pixels.z_bounds[1] * 10, neginf=task.pixels.z_bounds[0] * 10
    )
    return task.pixels.levels_from_logit(z), bad


def sample_metrics(
    levels: Tensor, labels: Tensor, test: TestSet, clf: FidelityClassifier, train: LabelledImages | None = None
) -> dict[str, Any]:
    """Fidelity (overall, per class), MMD^2 (median-heuristic bandwidth) and W1 of images (n, 64) vs the test set;
    with the model's target training images ``train`` also ``copying`` (module docstring)."""
    feats = level_features(levels)
    value, bandwidth = mmd2(feats, test.features)
    out = {
        "fidelity": clf.accuracy(feats, labels),
        "fidelity_per_class": {str(k): v for k, v in clf.per_class_accuracy(feats, labels).items()},
        "mmd2": value,
        "mmd_bandwidth": bandwidth,
        "w1": wasserstein(feats, test.features, p=1),
    }
    if train is not None:
        out["copying"] = copying(feats, level_features(train.levels), test.features)
    return out


def evaluate_model(
    model: DigitsModel,
    task: DigitsTask,
    test: TestSet,
    clf: FidelityClassifier,
    *,
    gen_per_class: int,
    seed: int,
    nll_rows: int | None = None,
    sample_options: dict[str, Any] | None = None,
    train: LabelledImages | None = None,
) -> dict[str, Any]:
    """Every metric of one fitted model; keeps per-image NLLs (for paired comparisons) and the generated levels
    (``generated``; with ``sample_options`` also ``generated_default``, the default-sampling draws). ``train``:
    the target images the model was fitted to (None for a model that saw none), for the copying check.

    With ``sample_options`` the sample metrics are of draws with those options, and ``default_sampling`` holds
    fidelity, MMD^2 and W1 of draws with the head's defaults (same seed), as the module docstring says."""
    start = time.perf_counter()
    model.eval()
    log_py = pixel_log_prob(model, task, test, nll_rows)
    nll_seconds = time.perf_counter() - start
    labels = torch.arange(N_CLASSES).repeat_interleave(gen_per_class)
    levels, bad = generate_levels(model, task, labels, seed, test.z.dtype, sample_options)
    default: dict[str, Any] = {}
    if sample_options:
        plain, plain_bad = generate_levels(model, task, labels, seed, test.z.dtype)
        metrics = sample_metrics(plain, labels, test, clf, train)
        default = {
            "sample_options": dict(sample_options),
            "default_sampling": {
                **{
                    key: metrics[key]
                    for key in ("fidelity", "fidelity_per_class", "mmd2", "w1", "copying")
                    if key in metrics
                },
                "nonfinite_samples": plain_bad,
            },
        }
    out = {
        **nll_summary(log_py, D),
        "nll_per_image": (-log_py).tolist(),
        "nll_seconds": nll_seconds,
        **sample_metrics(levels, labels, test, clf, train),
        "n_generated": len(labels),
        "nonfinite_samples": bad,
        **default,
        "eval_seconds": time.perf_counter() - start,
    }
    out["generated"] = (levels, labels)
    if sample_options:
        out["generated_default"] = (plain, labels)
    return out
