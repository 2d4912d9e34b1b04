"""Negative controls: pipelines broken on purpose, and distortions of finished records, that checks must FAIL.

A check that a wrong answer would also pass shows nothing. Each control below is aimed at a check; the
tests run every control at a small size and assert that its check FAILs while the correct pipeline PASSes,
and a slow test measures the false-pass and false-fail rates over repetitions.

Broken pipelines (``[experiment] control = NAME`` in a study config; the sweep applies them):

| control | what is broken | the check that must FAIL |
|---|---|---|
| ``random_encoder`` | transfer uses a randomly initialised frozen encoder | embedding floor equals its known answer |
| ``context_blind`` | every head ignores its context | KL equals its known answer |
| ``trainable_encoder`` | transfer's encoder keeps training on the target | transfer keeps the source embedding |
| ``wrong_truth_variance`` | KL is scored against a truth whose target noise variance is 1.5x | KL equals its known answer |
| ``kl_offset`` | the KL estimator adds 0.05 nats | KL equals its known answer |
| ``kl_factor`` | the KL estimator is off by a factor 2 | KL equals its known answer |
| ``source_subsampled`` | the source fit sees only the first quarter of its rows (a slicing bug) | embedding floor equals its known answer |
| ``shuffled_source`` | the source's c and x rows are misaligned (a join bug) | embedding floor equals its known answer |
| ``in_sample_kl`` | KL is estimated on the fit's own training pairs (optimistic) | KL is a divergence, or KL equals its known answer |
| ``wrong_domain_truth`` | KL is sampled and scored in the source domain instead of the target | KL equals its known answer |
| ``rows_dropped`` | the target head is fitted on 80% of its n_t rows (a silent hold-out) | KL equals its known answer |
| ``shared_eval_draw`` | every seed is scored on the same evaluation sample | replicates are independent |
| ``repeated_data`` | every seed fits and scores seed 0's data (its own task instance kept) | replicates are independent |

Record distortions (:func:`distort_records`) turn a finished run's records into wrong ones (every KL x3,
x0.1, +0.05 nats, a NaN, transfer and no-transfer swapped, the floor tripled, an oracle that reads c): the
report shows which checks FAIL on each, on the run's own records.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, cast

import torch
from torch import Tensor

from shared_embed.data import PairedData
from shared_embed.errors import ConfigError
from shared_embed.head import ExactFit, Head
from shared_embed.model import ConditionalModel
from theory.truth.kl import model_log_prob
from theory.truth.tasks import Task
from theory.verdicts.verdict import KL_FIELDS, Record

PIPELINE_CONTROLS = (
    "random_encoder",
    "context_blind",
    "trainable_encoder",
    "wrong_truth_variance",
    "kl_offset",
    "kl_factor",
    "source_subsampled",
    "shuffled_source",
    "in_sample_kl",
    "wrong_domain_truth",
    "rows_dropped",
    "shared_eval_draw",
    "repeated_data",
)
#: The check (or checks: any of them) each pipeline control is aimed at, by the name a
#: :class:`~theory.verdicts.verdict.CheckResult` carries.
TARGET_CHECK: dict[str, str | tuple[str, ...]] = {
    "random_encoder": "embedding floor equals its known answer",
    "context_blind": "KL equals its known answer",
    "trainable_encoder": "transfer keeps the source embedding",
    "wrong_truth_variance": "KL equals its known answer",
    "kl_offset": "KL equals its known answer",
    "kl_factor": "KL equals its known answer",
    "source_subsampled": "embedding floor equals its known answer",
    "shuffled_source": "embedding floor equals its known answer",
    "in_sample_kl": ("KL is a divergence (>= -3 SE)", "KL equals its known answer"),
    "wrong_domain_truth": "KL equals its known answer",
    "rows_dropped": "KL equals its known answer",
    "shared_eval_draw": "replicates are independent",
    "repeated_data": "replicates are independent",
}
KL_OFFSET, KL_FACTOR, TRUTH_VARIANCE_FACTOR = 0.05, 2.0, 1.5
#: The share of the target rows the ``rows_dropped`` control fits on, and of the source rows ``source_subsampled``.
KEPT_TARGET_ROWS, KEPT_SOURCE_ROWS = 0.8, 0.25


def aimed_checks(control: str) -> tuple[str, ...]:
    """The checks a pipeline control is aimed at: it is caught when any of them FAILs."""
    target = TARGET_CHECK[control]
    return (target,) if isinstance(target, str) else target


def check_control(name: str) -> str:
    """Validate a control name ("" is the real pipeline)."""
    if name and name not in PIPELINE_CONTROLS:
        raise ConfigError(f"unknown control {name!r}; valid: '' (none), {', '.join(PIPELINE_CONTROLS)}")
    return name


class ContextBlindHead(Head):
    """A head that ignores its context (it always sees zeros): the ``context_blind`` control."""

    def __init__(self, inner: Head) -> None:
        super().__init__(inner.features, inner.context_features)
        self.inner = inner
        self.kind = inner.kind

    @property
    def config(self) -> dict[str, Any]:
        return self.inner.config

    @staticmethod
    def _blind(context: Tensor | None) -> Tensor | None:
        return None if context is None else torch.zeros_like(context)

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.inner.loss(x, self._blind(context))

    def log_prob(self, x: Tensor, context: Tensor | None = None, **options: Any) -> Tensor:
        return self.inner.log_prob(x, self._blind(context), **options)

    def sample(
        self, n: int, context: Tensor | None = None, *, generator: torch.Generator | None = None, **options: Any
    ) -> Tensor:
        return self.inner.sample(n, self._blind(self.sample_context(n, context)), generator=generator, **options)


class ContextBlindExactHead(ContextBlindHead):
    """:class:`ContextBlindHead` for a head with an exact maximum-likelihood solver."""

    def fit_closed_form(self, x: Tensor, context: Tensor | None = None) -> None:
        cast(ExactFit, self.inner).fit_closed_form(x, self._blind(context))


def blind_factory(factory: Callable[[int | None], Head]) -> Callable[[int | None], Head]:
    """Wrap a head factory so every head it makes ignores its context."""

    def make(context_features: int | None) -> Head:
        head = factory(context_features)
        exact = callable(getattr(head, "fit_closed_form", None))
        return ContextBlindExactHead(head) if exact else ContextBlindHead(head)

    make.config = getattr(factory, "config", {})  # type: ignore[attr-defined]
    return make


def wrong_variance_task(task: Task, factor: float = TRUTH_VARIANCE_FACTOR) -> Task:
    """A copy of a linear-Gaussian task whose TARGET noise covariance is scaled by ``factor``."""
    if not hasattr(task, "params") or "target" not in task.params or len(task.params["target"]) != 3:
        raise ConfigError("control 'wrong_truth_variance' needs the conditional_gaussian task")
    bad = copy.deepcopy(task)
    a, b, cov = bad.params["target"]
    bad.params["target"] = (a, b, cov * factor)
    return bad


def broken_source(source: PairedData, control: str, generator: torch.Generator) -> PairedData:
    """The source pairs a broken pipeline fits on: a quarter of the rows, or x rows misaligned with c."""
    if control == "source_subsampled":
        return source.head(max(int(len(source) * KEPT_SOURCE_ROWS), cast(int, source.d_c) + source.d_x + 2))
    if control == "shuffled_source":
        return PairedData(source.c, source.x[torch.randperm(len(source), generator=generator)])
    return source


def broken_target(target: PairedData, control: str) -> PairedData:
    """The target pairs a broken pipeline fits on (``rows_dropped``: the first 80% of them)."""
    if control == "rows_dropped":
        return target.head(max(int(round(len(target) * KEPT_TARGET_ROWS)), 2))
    return target


def data_seed(seed: int, control: str) -> int:
    """The seed a cell's data streams come from (``repeated_data``: seed 0's, whatever the seed)."""
    return 0 if control == "repeated_data" else seed


def eval_seed(seed: int, control: str) -> int:
    """The seed a cell's evaluation sample comes from (``shared_eval_draw``: one sample for every seed)."""
    return 0 if control == "shared_eval_draw" else seed


def eval_domain(control: str) -> str:
    """The domain the KL is sampled and scored in (``wrong_domain_truth``: the source, by mistake)."""
    return "source" if control == "wrong_domain_truth" else "target"


def in_sample_log_densities(
    task: Task, models: dict[str, ConditionalModel], data: PairedData
) -> tuple[Tensor, dict[str, Tensor]]:
    """``in_sample_kl``: exact and model log-densities on the fit's own training pairs (an optimistic KL)."""
    log_p = task.log_prob(data.x.double(), cast(Tensor, data.c), "target").double()
    return log_p, {name: model_log_prob(m, data.x, data.c) for name, m in models.items()}


def distort_kl(fields: dict[str, Any], control: str) -> dict[str, Any]:
    """Apply a KL-estimator control (kl_offset: +0.05 nats, kl_factor: x2) to a record's KL fields."""
    if control not in ("kl_offset", "kl_factor"):
        return fields
    out = dict(fields)
    for key in KL_FIELDS:
        if out.get(key) is not None:
            out[key] = out[key] + KL_OFFSET if control == "kl_offset" else out[key] * KL_FACTOR
    return out


# -- distortions of finished records ----------------------------------------------------------------------
RECORD_DISTORTIONS: dict[str, Callable[[float], float]] = {
    "KL x3": lambda v: 3.0 * v,
    "KL x0.1": lambda v: 0.1 * v,
    "KL +0.05 nats": lambda v: v + 0.05,
}
#: Distortions that are not a map of every KL field, and the check each one is aimed at.
OTHER_DISTORTIONS = {
    "one NaN KL": "records are finite",
    "transfer and no-transfer swapped": "transfer KL equals its known answer",
    "floor x3": "embedding floor equals its known answer",
    "oracle reads c": "KL of oracle flat in d_c",
    "one KL at -10 SE": "KL is a divergence (>= -3 SE)",
    "seeds duplicated": "replicates are independent",
    "floor x0.5": "embedding floor equals its known answer",
}
#: Distortions that need a study with a source (transfer) fit.
SOURCE_DISTORTIONS = ("transfer and no-transfer swapped", "floor x3", "floor x0.5")
DISTORTIONS = (*RECORD_DISTORTIONS, *OTHER_DISTORTIONS)

#: For every check: the negative controls that must turn it to FAIL (or keep it from passing), as shown in
#: reports; ``docs/checks.md`` gives their measured false-pass rates.
NEGATIVE_CONTROLS = {
    "records are finite": "one NaN KL",
    "KL equals its known answer": "context_blind, wrong_truth_variance, kl_offset, kl_factor, in_sample_kl, "
    "wrong_domain_truth, rows_dropped pipelines; KL x3, x0.1, +0.05 nats",
    "KL exponent equals its known answer": "KL +0.05 nats (the exponent flattens)",
    "transfer KL equals its known answer": "source_subsampled, shuffled_source, random_encoder pipelines; KL x3; "
    "transfer and no-transfer swapped",
    "embedding floor equals its known answer": "random_encoder, source_subsampled, shuffled_source pipelines; floor "
    "x0.5, floor x3",
    "head term equals its known answer": "KL x3, KL x0.1 (records)",
    "KL is a divergence (>= -3 SE)": "in_sample_kl pipeline; one KL at -10 SE",
    "replicates are independent": "shared_eval_draw, repeated_data pipelines; seeds duplicated",
    "embedding floor falls as n_s grows": "random_encoder pipeline (when no known answer gates it)",
    "transfer keeps the source embedding": "trainable_encoder pipeline",
    "transfer beats no-transfer at small n_t": "transfer and no-transfer swapped (when no known answer gates it)",
    "floor is a floor (head term >= 0)": "floor x3 (when no known answer gates it)",
    "measured exponent >= predicted": "KL +0.05 nats on a parametric head (its exponent 1 flattens)",
    "no-transfer catches up at large n_t": "a gap that grows with n_t (synthetic records, tests)",
    "KL of oracle flat in d_c": "oracle reads c",
    "Girsanov bound holds over the SDE law's KL": "bound computed for a third of the sampled score error; SDE KL 1.5x "
    "the bound (tests)",
}


def distort_records(records: Sequence[Record], distortion: str) -> list[Record]:
    """Copies of ``records`` made wrong on purpose (see :data:`DISTORTIONS`):

    - ``KL x3``, ``KL x0.1``, ``KL +0.05 nats``: every KL field mapped;
    - ``one NaN KL``: the first finished record's KL is NaN;
    - ``transfer and no-transfer swapped``: every transfer cell gets the no-transfer KL of its seed and n_t, and
      no-transfer the transfer KL (at the largest n_s);
    - ``oracle reads c``: every oracle cell gets the KL of the direct fit on c (an oracle that leaks d_c);
    - ``floor x3`` / ``floor x0.5``: the embedding floor (and the floor model's KL on the paired sample) scaled,
      the head term recomputed as KL - floor: a floor estimator biased up / down;
    - ``one KL at -10 SE``: one record scored optimistically, its KL at -10 of its SEs;
    - ``seeds duplicated``: every seed carries the first seed's values (labels kept).
    """
    out = [dict(r) for r in records]
    if distortion in RECORD_DISTORTIONS:
        fn = RECORD_DISTORTIONS[distortion]
        for r in out:
            for key in KL_FIELDS:
                if r.get(key) is not None:
                    r[key] = fn(float(r[key]))
    elif distortion == "one NaN KL":
        first = next((r for r in out if r.get("status", "ok") == "ok" and r.get("kl") is not None), None)
        if first is not None:
            first["kl"] = math.nan
    elif distortion == "transfer and no-transfer swapped":
        cell_key = lambda r: (r["head"], r.get("task", ""), r["seed"], r["n_t"])  # noqa: E731
        nt = {cell_key(r): r["kl"] for r in out if r["variant"] == "no_transfer" and r.get("kl") is not None}
        tr = {
            cell_key(r): r["kl"]
            for r in sorted(
                (r for r in out if r["variant"] == "transfer" and r.get("kl") is not None),
                key=lambda r: r.get("n_s") or 0,
            )
        }  # the largest n_s last, so it wins
        for r in out:
            if r["variant"] == "transfer" and cell_key(r) in nt:
                r["kl"] = nt[cell_key(r)]
            elif r["variant"] == "no_transfer" and cell_key(r) in tr:
                r["kl"] = tr[cell_key(r)]
    elif distortion == "oracle reads c":
        cell_key = lambda r: (r["head"], r.get("task", ""), r["seed"], r["n_t"])  # noqa: E731
        direct = {cell_key(r): r["kl"] for r in out if r["variant"] == "direct" and r.get("kl") is not None}
        for r in out:
            if r["variant"] == "oracle" and cell_key(r) in direct:
                r["kl"] = direct[cell_key(r)]
    elif distortion in ("floor x3", "floor x0.5"):
        factor = 3.0 if distortion == "floor x3" else 0.5
        for r in out:
            if r.get("floor_paired") is not None and r.get("kl") is not None:
                r["floor"], r["floor_paired"] = factor * float(r["floor"]), factor * float(r["floor_paired"])
                r["head_term"] = float(r["kl"]) - r["floor_paired"]
    elif distortion == "one KL at -10 SE":
        first = next((r for r in out if r.get("status", "ok") == "ok" and r.get("kl") is not None), None)
        if first is not None:
            first["kl"] = -10.0 * float(first.get("kl_se") or 1e-3)
    elif distortion == "seeds duplicated":
        _duplicate_seeds(out)
    else:
        raise ConfigError(f"unknown distortion {distortion!r}; valid: {list(DISTORTIONS)}")
    return out


def _duplicate_seeds(records: list[Record]) -> None:
    """Every seed's records carry the first seed's values (seed labels and task seeds kept): replicates that
    are copies of one draw."""
    key = lambda r: (r["head"], r.get("task", ""), r["variant"], r.get("n_s"), r["n_t"])  # noqa: E731
    first = min(int(r["seed"]) for r in records)
    source = {key(r): r for r in records if int(r["seed"]) == first}
    keep = ("seed", "task_seed")
    for r in records:
        if key(r) in source and int(r["seed"]) != first:
            r.update({k: v for k, v in source[key(r)].items() if k not in keep})


# -- the small studies the controls run in ----------------------------------------------------------------
#: Controls whose target check needs a source fit (transfer); the others need only the known-answer variants.
SOURCE_CONTROLS = ("random_encoder", "trainable_encoder", "source_subsampled", "shuffled_source")


def control_study(
    control: str = "", *, source: bool, seeds: Sequence[int] | None = None, offset: int = 0
) -> dict[str, Any]:
    """A small study config (seconds on one core) in which each control's target check can PASS or FAIL.

    ``source=True`` (d_c = 8): transfer (a linear encoder and exactly fitted linear-Gaussian heads: the transfer known
    answers apply) at n_s = 100 and 3200 and no-transfer, at n_t = 30 and 60 (the floor, embedding, who-wins and
    transfer known-answer checks); ``source=False``: the known-answer variants oracle and direct at n_t 25 to 200.
    ``offset`` shifts the seeds, so repetitions are independent (fresh task instances and data). Seeds: 6 with a
    source (the who-wins gap is noisy at n_t = 30), 4 without.
    """
    seeds = seeds if seeds is not None else range(6 if source else 4)
    grid = (
        {"n_s": [100, 3200], "n_t": [30, 60], "variants": ["transfer", "no_transfer"]}
        if source
        else {"n_s": [100], "n_t": [25, 50, 100, 200], "variants": ["oracle", "direct"]}
    )
    return {
        "experiment": {"name": f"control {control or 'none'}", "control": check_control(control)},
        "task": {"name": "conditional_gaussian", "d_c": 8 if source else 4},
        "grid": {**grid, "seeds": [s + offset for s in seeds], "heads": ["lin"]},
        "heads": {"lin": {"kind": "linear_gaussian", "encoder": {"hidden": []}}},
        "encoder": {"hidden": [16]},
        "train": {
            "source": {"steps": 500, "lr": 1e-2, "eval_every": 50, "patience": 5},
            "target": {"steps": 400, "lr": 1e-2, "eval_every": 20, "patience": 5},
        },
        "evaluation": {"n_eval": 3000, "floor_n": 2000, "sample_n": 10, "sample_contexts": 2},
        "run": {"workers": 1},
    }
