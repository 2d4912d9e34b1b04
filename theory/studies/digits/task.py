"""A real-data transfer task: scikit-learn's 8x8 handwritten digits, source in the original style, target restyled.

Data: ``sklearn.datasets.load_digits`` (1,797 images of 8x8 pixels, 17 intensity levels 0..16, bundled with
scikit-learn, no download). Condition c = the digit label one-hot (n, 10); outcome x = the 64 pixels,
dequantised and logit-transformed by :class:`~theory.studies.digits.pixels.LogitPixels` (levels 17, alpha 0.05).

Domains: the source holds digits in the original style; the target holds *other* digits drawn in a new style
(``STYLES``: ``invert`` = 16 - v, white strokes become dark on a light page; ``reflect`` = mirror left-right;
``thicken`` = grey dilation by a 2x2 square, bolder strokes). Class structure is shared, the appearance is not.
These three put the target (largely) OUTSIDE the source's support.

``heavy_ink`` is the one target INSIDE the source's support (``SUBPOPULATIONS``): a reweighting of the source,
the case TGDP's premise q = w p describes. No image is redrawn. Within each class the images are ranked by ink
mass (the sum of the 64 levels, a visible feature: stroke thickness and size), and the top ``heavy_fraction``
(default 0.35, ties broken by row order) form the heavy-ink sub-population; the target test and pool images are
drawn from it, and the source keeps everything else: every light image and the heavy ones not drawn. So each
target image has look-alikes in the source (the source's own heavy images: about a fifth of each class at the
defaults), and q(x | y) = p(x | y) w(x | y) with w large on heavy strokes and near 0 on light ones. The target
also shifts the labels: the test split holds ``round(test_per_class * (0.5 + y / 9))`` images of digit y
(``label_shift_weights``: 0.5 for 0 up to 1.5 for 9, mean 1), so q(y) rises linearly with the digit while the
source's label proportions stay those of the data (near uniform); the test mean NLL weighs the digits by q(y).
The training pool stays balanced (``target_train(k)``: k images of every digit, the few-shot convention).

``ink_band`` cuts the same way from the middle of the ranking: the images between the shares ``ink_band =
(start, stop)`` of each class counted from the heaviest (default (0.4, 0.6), the middle fifth) form the
sub-population, with the same label shift and splits. Its ratio to the source is a window on the ink (1 inside,
0 on both sides), so the target is NARROWER than the source along the ink, not shifted: a reweighting that a
change of the source's mean cannot give.

``tilted_ink`` is the soft version of ``heavy_ink`` (same label shift, same splits): within each class every
image's ink mass is standardised (z = (ink - mean) / std over the class) and the test and pool images are drawn
without replacement with probability proportional to exp(``ink_tilt`` * z) (Gumbel top-k: the images with the
largest ``ink_tilt`` z + Gumbel noise, then shuffled so the test and pool draws are exchangeable); the source keeps
the rest. So q(x | y) is close to p(x | y) exp(ink_tilt z(x)) / E_p[exp(ink_tilt z)]: the true log ratio is a
smooth, increasing function of one visible feature (with ink a sum of pixel levels: close to linear in the
pixels), not a hard cut at a quantile of ink as in ``heavy_ink``, and every image, light ones included, has
some chance to be drawn. ``tilted_ink_divergence`` states E_q[log w] of that population tilt; the drawn target's
exact ratio to the source it leaves is steeper (the odds that an image is drawn, :meth:`DigitsTask.selection_log_ratio`).

Splits (per class, from one seeded permutation; every image belongs to exactly one split):
``target_test`` (``test_per_class`` images, or the label-shifted counts of a sub-population; the held-out target
test set no model sees; for a sub-population drawn from the sub-population like the pool), ``target_pool``
(``pool_per_class`` images; ``target_train(k)`` = the first k per class, nested in k), ``source`` (the rest).
``classifier`` holds the source split's images redrawn in the target style: real target-style digits for the
fidelity classifier (no generative model sees them in that style).

This is real data: there is no true density, noised score or density ratio; :meth:`DigitsTask.log_prob` and
the other ground-truth methods raise :class:`~shared_embed.errors.ConfigError` saying so.

Example:
    >>> task = DigitsTask(style="invert", seed=0)
    >>> data = task.paired(task.target_train(5), torch.Generator().manual_seed(0))
    >>> data.c.shape, data.x.shape
    (torch.Size([50, 10]), torch.Size([50, 64]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NoReturn

import numpy as np
import torch
from torch import Tensor

from shared_embed.data import PairedData
from shared_embed.errors import ConfigError, DataError, ShapeError
from shared_embed.validation import check_choice, check_fraction, check_positive_int
from theory.engine.seeding import stream_seed
from theory.studies.digits.inclusion import inclusion_log_odds
from theory.studies.digits.pixels import LogitPixels

N_CLASSES = 10
SIDE = 8
D = SIDE * SIDE
LEVELS = 17
STYLES = ("invert", "reflect", "thicken", "heavy_ink", "tilted_ink", "ink_band")
#: styles whose target is a sub-population of the original digits (a reweighting, inside the source's support)
SUBPOPULATIONS = ("heavy_ink", "tilted_ink", "ink_band")
#: sub-population styles cut out of each class by a window of its ink ranking (a hard selection)
INK_WINDOWS = ("heavy_ink", "ink_band")
DOMAINS = ("source", "target")
#: training draws keep u in [1e-4, 1 - 1e-4) so ``LogitPixels.redequantize`` recovers levels exactly
DEQUANT_MARGIN = 1e-4


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.int64), bunch.target.astype(np.int64)


def load_digit_levels() -> tuple[Tensor, Tensor]:
    """All 1,797 digits: levels (n, 64) int64 in 0..16 (row-major 8x8) and labels (n,) int64 in 0..9."""
    levels, labels = _load()
    return torch.from_numpy(levels.copy()), torch.from_numpy(labels.copy())


def apply_style(levels: Tensor, style: str) -> Tensor:
    """Redraw images (n, 64) of levels 0..16 in ``style`` (see ``STYLES``); returns int64 levels (n, 64).

    ``heavy_ink`` and ``tilted_ink`` select images and redraw none: they return the levels unchanged."""
    check_choice("style", style, STYLES)
    if levels.dim() != 2 or levels.shape[1] != D:
        raise ShapeError(f"levels must be (n, {D}), got shape {tuple(levels.shape)}")
    img = levels.to(torch.int64).reshape(-1, SIDE, SIDE)
    if style in SUBPOPULATIONS:
        out = img
    elif style == "invert":
        out = (LEVELS - 1) - img
    elif style == "reflect":
        out = img.flip(-1)
    else:  # thicken: each pixel takes the max over itself and its right, lower and lower-right neighbours
        pad = torch.nn.functional.pad(img, (0, 1, 0, 1))
        out = torch.maximum(
            torch.maximum(pad[:, :-1, :-1], pad[:, :-1, 1:]), torch.maximum(pad[:, 1:, :-1], pad[:, 1:, 1:])
        )
    return out.reshape(-1, D)


def level_features(levels: Tensor) -> Tensor:
    """Images (n, 64) of levels 0..16 as features in [0, 1]^64, float64: levels / 16 (the sample metrics', the
    fidelity classifier's and the domain classifier's features)."""
    return levels.double() / (LEVELS - 1)


def ink_mass(levels: Tensor) -> Tensor:
    """The ink of each image (n, 64) of levels: the sum of its levels, (n,) int64."""
    return levels.to(torch.int64).sum(-1)


def ink_window_rows(levels: Tensor, start: float, stop: float) -> tuple[Tensor, Tensor]:
    """(inside, outside) row indices of images (n, 64), ranked by ink from the most (ties by row order, a stable
    ranking): the ranks ``ceil(start * n)`` to ``ceil(stop * n) - 1`` and the rest, each in ascending row order."""
    n = levels.shape[0]
    order = torch.sort(-ink_mass(levels), stable=True).indices
    lo, hi = math.ceil(start * n), math.ceil(stop * n)
    return order[lo:hi].sort().values, torch.cat([order[:lo], order[hi:]]).sort().values


def heavy_ink_rows(levels: Tensor, fraction: float) -> tuple[Tensor, Tensor]:
    """(heavy, light) row indices of images (n, 64): the ``ceil(fraction * n)`` with the most ink (ties by row
    order, a stable ranking) and the rest, each in ascending row order."""
    return ink_window_rows(levels, 0.0, fraction)


def check_ink_band(band: Any) -> tuple[float, float]:
    """``band`` as (start, stop) floats with 0 <= start < stop <= 1; ConfigError naming ``ink_band`` otherwise."""
    try:
        start, stop = (float(v) for v in band)
    except (TypeError, ValueError):
        raise ConfigError(f"ink_band must be two numbers [start, stop], got {band!r}") from None
    if not (0.0 <= start < stop <= 1.0):
        raise ConfigError(f"ink_band must satisfy 0 <= start < stop <= 1 (shares from the heaviest), got {band!r}")
    return start, stop


def label_shift_weights() -> list[float]:
    """q(y) / (1 / 10) of the ``heavy_ink`` target: 0.5 + y / 9 for y = 0..9 (mean 1)."""
    return [0.5 + k / 9 for k in range(N_CLASSES)]


def standardised_ink(levels: Tensor) -> Tensor:
    """z (n,) float64 of images (n, 64): their ink standardised over the given images, (ink - mean) / sd; the
    feature ``tilted_ink`` draws on (one class at a time)."""
    ink = ink_mass(levels).double()
    return (ink - ink.mean()) / ink.std().clamp_min(1e-12)


def tilted_ink_rows(levels: Tensor, tilt: float, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """(drawn, rest) row indices of images (n_rows, 64): ``n`` rows drawn without replacement with probability
    proportional to exp(tilt * z), z the standardised ink (Gumbel top-k), the drawn ones in random order, the rest
    in ascending row order."""
    z = standardised_ink(levels)
    u = torch.rand(len(z), generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    keys = tilt * z - torch.log(-torch.log(u))
    order = torch.sort(-keys, stable=True).indices
    drawn = order[:n]
    drawn = drawn[torch.randperm(n, generator=generator)]
    return drawn, order[n:].sort().values


def tilted_ink_divergence(tilt: float) -> dict[str, float]:
    """E_q[log w] = KL(q || p) of the population tilt q(x | y) = p(x | y) exp(tilt z) / E_p[exp(tilt z)] over all
    1,797 digits (z the within-class standardised ink, p the class's empirical distribution), averaged over the
    classes with the label-shift weights; and the same for the ``heavy_ink``-style hard cut is log(1 / fraction).
    The drawn target also depletes the source of heavy images, so the ratio to the actual source is larger."""
    levels, labels = load_digit_levels()
    weights = label_shift_weights()
    kl = []
    for k in range(N_CLASSES):
        z = standardised_ink(levels[labels == k])
        log_w = tilt * z - torch.logsumexp(tilt * z, 0) + math.log(len(z))
        q = torch.softmax(tilt * z, 0)
        kl.append(float((q * log_w).sum()))
    mean = sum(w * v for w, v in zip(weights, kl, strict=True)) / sum(weights)
    return {"kl_label_shift_weighted": mean, "kl_min": min(kl), "kl_max": max(kl)}


@lru_cache(maxsize=64)
def tilted_ink_log_odds(tilt: float, label: int, drawn: int) -> tuple[Tensor, Tensor]:
    """(ink, log_odds): the ink masses of the bundled digits ``label`` in ascending order (float64) and, for each,
    the log odds log pi - log(1 - pi) that the image is among the ``drawn`` images of the class that
    ``tilted_ink_rows`` draws at ``tilt`` (:func:`~theory.studies.digits.inclusion.inclusion_log_odds`; images of
    equal ink have equal odds, so any image's odds are found by its ink). Cached: under a second per class."""
    levels, labels = load_digit_levels()
    everyone = levels[labels == label]
    ink = ink_mass(everyone).double()
    order = ink.argsort()
    return ink[order], inclusion_log_odds(tilt * standardised_ink(everyone), drawn)[order]


@dataclass(frozen=True)
class LabelledImages:
    """Integer images ``levels`` (n, 64) int64 in 0..16 with their digit ``labels`` (n,) int64."""

    levels: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.levels.dim() != 2 or self.levels.shape[1] != D:
            raise ShapeError(f"levels must be (n, {D}), got shape {tuple(self.levels.shape)}")
        if self.labels.shape != (self.levels.shape[0],):
            raise ShapeError(f"labels must be ({self.levels.shape[0]},), got shape {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.levels.shape[0]

    def one_hot(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The conditions c (n, 10)."""
        return torch.nn.functional.one_hot(self.labels, N_CLASSES).to(dtype)

    def subset(self, index: Tensor) -> LabelledImages:
        return LabelledImages(self.levels[index], self.labels[index])


@dataclass(frozen=True)
class DigitSplits:
    """Disjoint splits of the digits (module docstring); ``ids`` maps each split to rows of ``load_digits``."""

    source: LabelledImages
    target_pool: LabelledImages
    target_test: LabelledImages
    classifier: LabelledImages
    ids: dict[str, Tensor]


class DigitsTask:
    """Few-shot transfer on 8x8 digits: original-style source, restyled few-shot target (module docstring).

    Args:
        style: the target's style transform, one of ``STYLES``.
        test_per_class: held-out target test images per class.
        pool_per_class: target training images per class available to :meth:`target_train`.
        seed: the split's seed (the permutation is drawn from its digest, :func:`theory.engine.seeding.stream_seed`).
        pixels: the dequantisation / logit map (levels must be 17).
        heavy_fraction: for ``heavy_ink``, the share of each class (by ink mass, from the top) that forms the
            target sub-population; unused by the other styles.
        ink_tilt: for ``tilted_ink``, the tilt beta of the draw probabilities exp(beta z) (module docstring);
            unused by the other styles.
        ink_band: for ``ink_band``, (start, stop) with 0 <= start < stop <= 1: the window of each class's ink
            ranking, as shares from the heaviest, that forms the target sub-population (``(0.4, 0.6)``: the
            middle fifth); unused by the other styles.
    """

    def __init__(
        self,
        style: str = "invert",
        test_per_class: int = 30,
        pool_per_class: int = 50,
        seed: int = 0,
        pixels: LogitPixels | None = None,
        heavy_fraction: float = 0.35,
        ink_tilt: float = 2.0,
        ink_band: tuple[float, float] = (0.4, 0.6),
    ) -> None:
        self.style = check_choice("style", style, STYLES)
        self.test_per_class = check_positive_int("test_per_class", test_per_class)
        self.pool_per_class = check_positive_int("pool_per_class", pool_per_class)
        self.heavy_fraction = check_fraction("heavy_fraction", heavy_fraction)
        self.ink_tilt = float(ink_tilt)
        if not (math.isfinite(self.ink_tilt) and self.ink_tilt >= 0):
            raise ConfigError(f"ink_tilt must be a finite number >= 0, got {ink_tilt!r}")
        self.ink_band = check_ink_band(ink_band)
        self.seed = int(seed)
        self.pixels = pixels or LogitPixels(levels=LEVELS, alpha=0.05)
        if self.pixels.levels != LEVELS:
            raise ConfigError(f"pixels.levels must be {LEVELS} for the digits, got {self.pixels.levels}")
        self.splits = self._split()

    @property
    def config(self) -> dict[str, Any]:
        return {
            "name": "digits",
            "style": self.style,
            "test_per_class": self.test_per_class,
            "pool_per_class": self.pool_per_class,
            "seed": self.seed,
            **({"heavy_fraction": self.heavy_fraction} if self.style == "heavy_ink" else {}),
            **({"ink_tilt": self.ink_tilt} if self.style == "tilted_ink" else {}),
            **({"ink_band": list(self.ink_band)} if self.style == "ink_band" else {}),
            "levels": self.pixels.levels,
            "alpha": self.pixels.alpha,
            "d_c": N_CLASSES,
            "d_x": D,
        }

    d_c = N_CLASSES
    d_x = D

    def test_counts(self) -> list[int]:
        """Held-out test images per digit 0..9: ``test_per_class`` each, or the label-shifted counts of
        ``heavy_ink`` (module docstring)."""
        if self.style not in SUBPOPULATIONS:
            return [self.test_per_class] * N_CLASSES
        return [max(1, round(self.test_per_class * w)) for w in label_shift_weights()]

    def _split(self) -> DigitSplits:
        levels, labels = load_digit_levels()
        gen = torch.Generator().manual_seed(stream_seed("digits", self.seed, "split"))
        parts: dict[str, list[Tensor]] = {"test": [], "pool": [], "source": []}
        for k, n_test in enumerate(self.test_counts()):
            need = n_test + self.pool_per_class
            idx = torch.nonzero(labels == k).squeeze(1)
            if self.style == "tilted_ink":
                if len(idx) <= need:
                    raise DataError(f"class {k} has {len(idx)} images: {n_test} test + {self.pool_per_class} pool")
                drawn, rest = tilted_ink_rows(levels[idx], self.ink_tilt, need, gen)
                parts["test"].append(idx[drawn[:n_test]])
                parts["pool"].append(idx[drawn[n_test:]])
                parts["source"].append(idx[rest])
                continue
            if self.style in INK_WINDOWS:
                heavy, light = ink_window_rows(levels[idx], *self._window())
                if len(heavy) < need:
                    raise DataError(
                        f"class {k} has {len(heavy)} images in its {self.style} window {self._window()}: "
                        f"its {n_test} test + pool_per_class {self.pool_per_class} = {need} do not fit; lower them"
                    )
                heavy = idx[heavy][torch.randperm(len(heavy), generator=gen)]
                parts["test"].append(heavy[:n_test])
                parts["pool"].append(heavy[n_test:need])
                parts["source"].append(torch.cat([heavy[need:], idx[light]]))
                continue
            if len(idx) <= need:
                raise DataError(
                    f"class {k} has {len(idx)} images: test_per_class + pool_per_class = {need} "
                    "leaves no source images; lower them"
                )
            idx = idx[torch.randperm(len(idx), generator=gen)]
            parts["test"].append(idx[:n_test])
            parts["pool"].append(idx[n_test:need])
            parts["source"].append(idx[need:])
        # Pool rows ordered by rank within class, so the first 10k rows hold k images of every class.
        pool = torch.stack(parts["pool"], 1).reshape(-1)
        test = torch.cat(parts["test"])
        source = torch.cat(parts["source"])
        source = source[torch.randperm(len(source), generator=gen)]
        restyle = lambda i: LabelledImages(apply_style(levels[i], self.style), labels[i])  # noqa: E731
        return DigitSplits(
            source=LabelledImages(levels[source], labels[source]),
            target_pool=restyle(pool),
            target_test=restyle(test),
            classifier=restyle(source),
            ids={"source": source, "target_pool": pool, "target_test": test},
        )

    def _window(self) -> tuple[float, float]:
        """The (start, stop) window of each class's ink ranking that a hard-cut style selects."""
        return (0.0, self.heavy_fraction) if self.style == "heavy_ink" else self.ink_band

    def selection_log_ratio(self, images: LabelledImages) -> Tensor:
        """log w(x | y) (n,), float64, of the target to the source, up to a constant per class: the exact ratio of
        the rule that drew the sub-population target from the whole class to the images it left in the source.
        ``heavy_ink``: 0 at or above the class's heavy-ink threshold (the least ink among its ``heavy_fraction``
        heaviest images; ties at it count as heavy), -inf below (the target and the source hold the class's
        heavy images uniformly). ``ink_band``: 0 for an ink between the least and the most of the class's window
        (ends included), -inf outside. ``tilted_ink``: the log odds log pi - log(1 - pi) that the image is among the
        class's drawn ones (:func:`~theory.studies.digits.inclusion.inclusion_log_odds`: the draw is without
        replacement, so the heaviest images are almost always drawn and almost never left in the source, a
        steeper ratio than the tilt ``ink_tilt`` z it starts from). Its gain over the source on target rows,
        E_q[log w] - log E_p[w] (:func:`diffusion.tgdp.reweighting_gain` with the source rows), is in
        expectation the most any reweighting of the source gains: E_q[log w] - log E_p[w] <= KL(q || p), equal
        at w = q / p.

        Raises:
            ConfigError: a style that redraws images (no reweighting gives it). DataError: an image whose ink
                no digit of its class has (not one of the bundled digits).
        """
        if self.style not in SUBPOPULATIONS:
            raise ConfigError(f"style '{self.style}' redraws the images: only {SUBPOPULATIONS} are reweightings")
        levels, labels = load_digit_levels()
        ink = ink_mass(images.levels).double()
        out = torch.empty(len(images), dtype=torch.float64)
        for k, n_test in enumerate(self.test_counts()):
            rows = images.labels == k
            if self.style in INK_WINDOWS:
                everyone = levels[labels == k]
                inside, _ = ink_window_rows(everyone, *self._window())
                window = ink_mass(everyone[inside]).double()
                outside = (ink[rows] < window.min()) | (ink[rows] > window.max())
                out[rows] = torch.zeros_like(ink[rows]).masked_fill(outside, -math.inf)
                continue
            values, log_odds = tilted_ink_log_odds(self.ink_tilt, k, n_test + self.pool_per_class)
            at = torch.searchsorted(values, ink[rows]).clamp_max(len(values) - 1)
            if not bool((values[at] == ink[rows]).all()):
                raise DataError(f"an image of digit {k} has an ink mass no bundled digit {k} has")
            out[rows] = log_odds[at]
        return out

    def target_train(self, per_class: int) -> LabelledImages:
        """The first ``per_class`` pool images of every class (nested in ``per_class``), 10 * per_class rows."""
        check_positive_int("per_class", per_class)
        if per_class > self.pool_per_class:
            raise DataError(f"per_class must be <= pool_per_class ({self.pool_per_class}), got {per_class}")
        return self.splits.target_pool.subset(torch.arange(N_CLASSES * per_class))

    def paired(
        self, images: LabelledImages, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> PairedData:
        """The data contract: c = one-hot labels (n, 10), x = logit of freshly dequantised pixels (n, 64).

        The noise keeps a margin of ``DEQUANT_MARGIN`` from the bin edges so training can redraw it with
        ``self.pixels.redequantize`` (pass it as ``augment`` to the transfer workflow)."""
        y = self.pixels.dequantize(images.levels, generator, dtype=dtype, margin=DEQUANT_MARGIN)
        z, _ = self.pixels.to_logit(y)
        return PairedData(images.one_hot(dtype), z)

    def sample(self, n: int, domain: str, generator: torch.Generator | None = None) -> PairedData:
        """n distinct training images of ``domain`` ('source': the source split, 'target': the target pool),
        drawn without replacement and dequantised with ``generator``. The test split is never sampled."""
        check_choice("domain", domain, DOMAINS)
        images = self.splits.source if domain == "source" else self.splits.target_pool
        check_positive_int("n", n)
        if n > len(images):
            raise DataError(f"n must be <= the {len(images)} {domain} training images, got {n}")
        idx = torch.randperm(len(images), generator=generator)[:n]
        return self.paired(images.subset(idx), generator)

    # -- no ground truth on real data ----------------------------------------------------------------
    def _no_truth(self, what: str) -> NoReturn:
        raise ConfigError(
            f"DigitsTask is real data and has no true {what}: score models by held-out test NLL "
            "(theory.studies.digits.experiment) or sample-based metrics (theory.truth.metrics), not by KL to the truth"
        )

    def log_prob(self, x: Tensor, c: Tensor, domain: str) -> NoReturn:
        self._no_truth("log-density")

    def noised_score(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._no_truth("noised score")

    def log_density_ratio(self, *args: Any, **kwargs: Any) -> NoReturn:
        self._no_truth("density ratio")

    @property
    def embedding(self) -> NoReturn:
        self._no_truth("embedding h* (there is no oracle variant)")
