"""The methods of the TGDP simulation, each fitted by the library's own pieces and returned as a score function.

Every method gives a :class:`Fitted`: its target score ``score(x, t, y)`` (a ``diffusion.sampling.ScoreFn``),
the guidance and classifier ratio when it has them (for the error metrics), its optimiser steps and its
settings. All training goes through ``shared_embed.train.fit`` (``train_head`` / ``fine_tune`` /
``fit_tgdp``, or directly for the exact-w guidance), seeded per cell.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from diffusion.head import DiffusionHead
from diffusion.sampling import ScoreFn
from diffusion.schedule import VPSchedule
from diffusion.tgdp import (
    DensityRatio,
    FunctionGuidance,
    GuidedScore,
    TGDPConfig,
    TGDPFit,
    domain_guidance_score,
    fine_tune,
    fit_tgdp,
    train_head,
)
from diffusion.tgdp.guidance import Guidance
from diffusion.tgdp.quadratic_ratio import QuadraticLogRatio
from diffusion.tgdp.recipes import fit_classifier_guidance, fit_kernel_guidance
from diffusion.tgdp.switch_time import select_switch
from shared_embed.data import PairedData
from shared_embed.train import TrainConfig
from theory.engine.seeding import stream_seed
from theory.studies.tgdp.settings import METHODS, REFERENCES, SWITCH_LOW, TGDPSettings
from theory.truth.tasks import TwoGaussianTask


@dataclass
class Fitted:
    """A fitted method: its score, optional guidance / classifier ratio, optimiser steps and settings."""

    score: ScoreFn
    guidance: Guidance | None = None
    ratio: DensityRatio | QuadraticLogRatio | None = None
    steps: int = 0
    info: dict[str, Any] = field(default_factory=dict)


def _split_fit(
    head: DiffusionHead,
    target: PairedData,
    config: TrainConfig,
    val_fraction: float,
    seed: int,
    conditional: bool,
    tune: bool,
) -> tuple[DiffusionHead, int, PairedData]:
    """Train ``head`` (a copy when ``tune``) on the target with ``val_fraction`` held out for early stopping;
    returns the head, its optimiser steps and the held-out rows."""
    train, val = target.split(val_fraction, torch.Generator().manual_seed(seed))
    ctx = (lambda d: d.c) if conditional else (lambda d: None)
    config = config.replace(seed=seed)
    if tune:
        head, history = fine_tune(head, train.x, ctx(train), config=config, val_x=val.x, val_context=ctx(val))
    else:
        history = train_head(head, train.x, ctx(train), config=config, val_x=val.x, val_context=ctx(val))
    head.requires_grad_(False)
    return head, history.steps_done, val


def fit_exact_w_guidance(
    task: TwoGaussianTask,
    src: DiffusionHead,
    source: PairedData,
    target: PairedData,
    schedule: VPSchedule,
    conditional: bool,
    options: dict[str, Any],
    seed: int,
) -> TGDPFit:
    """TGDP with the classifier replaced by the EXACT w = q / p at every source draw (``fit_tgdp`` with
    ``source_weights``): the same guidance network, targets and loop settings as the ``tgdp`` method."""
    ctx: dict[str, Any] = {"source_context": source.c, "target_context": target.c} if conditional else {}
    w0 = task.log_density_ratio(source.x, source.c if conditional else None).exp()
    return fit_tgdp(
        src.score,
        source.x,
        target.x,
        schedule=schedule,
        config=TGDPConfig.from_options(options, seed),
        source_weights=w0,
        **ctx,
    )


def exact_guidance(task: TwoGaussianTask, schedule: VPSchedule) -> FunctionGuidance:
    """The exact log h_t(x[, y]) = log q_t / p_t of the task as a guidance."""
    return FunctionGuidance(lambda x, t, y: task.log_guidance(x, schedule.alpha(t), schedule.sigma(t), y))


def cell_seed(seed: int, n_t: int, method: str) -> int:
    """The seed of one cell of the grid: a digest of its coordinates (the references' do not depend on n_t), so
    adding a method to the grid changes no other method's records."""
    return stream_seed("tgdp", seed, 0 if method in REFERENCES else n_t, method)


def _sibling_seed(grid: tuple[int, int], other: str) -> int:
    """The cell seed of ``other`` at grid coordinates ``grid`` = (seed, n_t): a piece shared by several methods
    is fitted with its own method's seed, whichever asks first."""
    return cell_seed(grid[0], grid[1], other)


def _baseline_head(
    kind: str,
    s: TGDPSettings,
    seed: int,
    conditional: bool,
    src: DiffusionHead,
    target: PairedData,
    cache: dict[Any, Any],
) -> tuple[DiffusionHead, int, PairedData]:
    """The target-only or fine-tuned head of this n_t (``seed``: the cell seed of ``kind``), fitted once and
    kept in ``cache`` under ``("_target_only" | "_fine_tuned", n_t)``."""
    key = (f"_{'fine_tuned' if kind == 'fine_tune' else 'target_only'}", len(target))
    if key not in cache:
        if kind == "fine_tune":
            cache[key] = _split_fit(src, target, s.fine_tune_train, s.val_fraction, seed, conditional, tune=True)
        else:
            torch.manual_seed(seed)  # the initial weights: the same as in the target_only cell itself
            head = DiffusionHead(2, 1 if conditional else None, **s.head)
            cache[key] = _split_fit(head, target, s.target_train, s.val_fraction, seed, conditional, tune=False)
    return cache[key]


@dataclass(frozen=True)
class MethodCall:
    """What every method's fit is given: the cell (``method``, its cell ``seed``, ``grid`` = (seed, n_t), whose
    sibling methods' seeds seed the pieces they share), the task and settings, the frozen source head, the data,
    and ``cache``, this n_t's target-only and fine-tuned heads and kernel guidance, shared by the methods built
    on them."""

    method: str
    task: TwoGaussianTask
    s: TGDPSettings
    seed: int
    conditional: bool
    src: DiffusionHead
    source: PairedData
    target: PairedData
    schedule: VPSchedule
    cache: dict[Any, Any]
    grid: tuple[int, int]

    def context(self) -> dict[str, Any]:
        """The source and target labels as ``fit_tgdp``'s keywords (conditional version), else nothing."""
        return {"source_context": self.source.c, "target_context": self.target.c} if self.conditional else {}


def _source_only(m: MethodCall) -> Fitted:
    return Fitted(m.src.score)


def _exact_h(m: MethodCall) -> Fitted:
    return Fitted(GuidedScore(m.src.score, exact_guidance(m.task, m.schedule)))  # no guidance errors: exact


def _exact_w(m: MethodCall) -> Fitted:
    fitted = fit_exact_w_guidance(m.task, m.src, m.source, m.target, m.schedule, m.conditional, m.s.tgdp, m.seed)
    return Fitted(fitted.score, fitted.guidance, steps=fitted.histories["guidance"].steps_done)


def _target_only(m: MethodCall) -> Fitted:
    head, steps, _ = _baseline_head(m.method, m.s, m.seed, m.conditional, m.src, m.target, m.cache)
    return Fitted(head.score, steps=steps, info={"val_fraction": m.s.val_fraction})


def _fine_tuned(m: MethodCall) -> tuple[DiffusionHead, int]:
    head, steps, _ = _baseline_head(
        "fine_tune", m.s, _sibling_seed(m.grid, "fine_tune"), m.conditional, m.src, m.target, m.cache
    )
    return head, steps


def _fine_tune(m: MethodCall) -> Fitted:
    head, steps = _fine_tuned(m)
    return Fitted(head.score, steps=steps, info={"val_fraction": m.s.val_fraction})


def _domain_guidance(m: MethodCall) -> Fitted:
    head, steps = _fine_tuned(m)
    score = domain_guidance_score(m.src.score, head.score, m.s.dg_weight)
    return Fitted(score, steps=steps, info={"weight": m.s.dg_weight})


def _tgdp(m: MethodCall) -> Fitted:
    options = {**m.s.tgdp, **(m.s.regularizers if m.method == "tgdp_reg" else {})}
    config = TGDPConfig.from_options(options, m.seed)
    fitted = fit_tgdp(m.src.score, m.source.x, m.target.x, schedule=m.schedule, config=config, **m.context())
    steps = sum(h.steps_done for h in fitted.histories.values())
    info = {k: options.get(k, 0.0) for k in ("eta_cycle", "eta_consistency")}
    return Fitted(fitted.score, fitted.guidance, fitted.ratio, steps, info)


def _kernel(m: MethodCall) -> Fitted:
    """The cross-validated quadratic log-ratio classifier and the KDE-smoothed kernel guidance E_{p_hat}[w | x_t]
    (``s.kernel``: bandwidth, rows), fitted once per n_t and shared with the switched methods."""
    key = ("_kernel", len(m.target))
    if key not in m.cache:
        fit = fit_kernel_guidance(
            m.src.score,
            m.source.x,
            m.target.x,
            m.schedule,
            bandwidth=m.s.kernel.get("bandwidth", "scott"),
            max_rows=m.s.kernel.get("max_rows"),
            seed=m.seed,
            **m.context(),
        )
        m.cache[key] = Fitted(fit.score, fit.guidance, fit.ratio, fit.steps, fit.info)
    return m.cache[key]


def _noisy_classifier(m: MethodCall) -> Fitted:
    """The time-dependent domain classifier's log-odds (plus log n_s / n_t) used as log h_t itself."""
    options = dict(m.s.noisy_classifier)
    train = options.pop("train", {})
    fit = fit_classifier_guidance(
        m.src.score, m.source.x, m.target.x, m.schedule, train=train, seed=m.seed, **options, **m.context()
    )
    return Fitted(fit.score, fit.guidance, fit.ratio, fit.steps, fit.info)


def _switched(m: MethodCall) -> Fitted:
    """The kernel guidance above a switch time, the target-only (``tgdp_kernel_switch``) or fine-tuned
    (``tgdp_kernel_switch_ft``) head below it. The switch time is chosen by ``select_switch`` on the rows the
    low head held out (its validation rows: they stopped its training but it never fitted them), among
    ``s.switch["candidates"]``; no exact w or h is used."""
    kernel = _kernel(replace(m, method="tgdp_kernel", seed=_sibling_seed(m.grid, "tgdp_kernel")))
    low = SWITCH_LOW[m.method]
    head, steps, val = _baseline_head(low, m.s, _sibling_seed(m.grid, low), m.conditional, m.src, m.target, m.cache)
    options = {"candidates": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0), **m.s.switch}
    context = val.c if m.conditional else None
    choice = select_switch(kernel.score, head.score, val.x, context, m.schedule, seed=m.seed, **options)
    info = {
        **kernel.info,
        "low": low,
        "switch": choice.switch,
        "switch_losses": dict(zip(map(str, choice.candidates), choice.losses)),
    }
    return Fitted(choice.score(kernel.score, head.score), kernel.guidance, kernel.ratio, steps, info)


#: method -> its fit; :data:`~theory.studies.tgdp.settings.METHODS` lists them in table order
FITTERS: dict[str, Callable[[MethodCall], Fitted]] = {
    "target_only": _target_only,
    "fine_tune": _fine_tune,
    "domain_guidance": _domain_guidance,
    "tgdp": _tgdp,
    "tgdp_reg": _tgdp,
    "tgdp_kernel": _kernel,
    "tgdp_noisy_clf": _noisy_classifier,
    "source_only": _source_only,
    "tgdp_exact_w": _exact_w,
    "tgdp_exact_h": _exact_h,
    "tgdp_kernel_switch": _switched,
    "tgdp_kernel_switch_ft": _switched,
}


def fit_method(
    method: str,
    task: TwoGaussianTask,
    s: TGDPSettings,
    seed: int,
    conditional: bool,
    src: DiffusionHead,
    source: PairedData,
    target: PairedData,
    schedule: VPSchedule,
    cache: dict[Any, Any],
    *,
    grid: tuple[int, int],
) -> Fitted:
    """Fit ``method`` (a key of :data:`FITTERS`) at this target sample with its cell seed ``seed`` (see
    :class:`MethodCall`); ValueError naming the valid methods for any other."""
    if method not in FITTERS:
        raise ValueError(f"unknown method {method!r}; valid: {list(METHODS)}")
    return FITTERS[method](MethodCall(method, task, s, seed, conditional, src, source, target, schedule, cache, grid))
