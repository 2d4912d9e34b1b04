"""The digits study: few-shot transfer on restyled 8x8 digits, for flow, diffusion and baseline heads.

For every seed, head and target size k (images per class): the shared-embedding variants ``transfer``,
``no_transfer`` and ``fine_tune`` of :func:`shared_embed.transfer.fit_variants` (no oracle: real data has
no true embedding), plus ``source_only`` (the source model applied to the target, no target data), and for
diffusion heads the conditional TGDP of :mod:`theory.studies.digits.tgdp` when ``tgdp`` is on. Each fitted
model is scored by :func:`theory.studies.digits.evaluation.evaluate_model`: held-out NLL (nats, bits/dim, pixel
space), conditional fidelity, MMD^2 and W1, and for every model fitted to target images the copying check of its
draws against those images (``copying``). Training redraws the dequantisation noise of every batch
(``augment=task.pixels.redequantize``), as the flow literature does.

A TGDP record's ``tgdp`` entry says what its guard did and ``predicted_gain``: the log-likelihood gain over the
source model its ratio predicts on the scored test images (:func:`diffusion.tgdp.predict_gain`), which the report
sets against the gain achieved; None, with the reason in ``no_prediction`` (:func:`no_gain_prediction`), when the
model is not a reweighting of the source. For a sub-population target (``heavy_ink``, ``ink_band``,
``tilted_ink``) each seed's reference holds ``selection_gain``: the same quantity for the target's exact ratio to
the source, from the rule that drew it (:meth:`~theory.studies.digits.task.DigitsTask.selection_log_ratio`), so
in expectation the most any reweighting gains.

The encoder maps the one-hot label (10) to d_h = ``embed_dim``; the heads model the 64 logit pixels given it.

Example:
    >>> from theory.studies.digits.study import parse   # the shipped config with its seconds-long preset
    >>> experiment = parse(read_config(resolve_config(Path("digits")), "smoke"))[1]
    >>> result = run_digits_experiment(experiment, out_dir="out")
    >>> print(result["table"])
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from shared_embed.checkpoint import atomic_write_text
from shared_embed.encoder import Encoder
from shared_embed.errors import ConfigError, DataError
from shared_embed.gaussian import GaussianHead
from shared_embed.head import Head
from shared_embed.train import TrainConfig, TrainHistory
from shared_embed.transfer import TransferConfig, fit_source, fit_variants, new_encoder
from shared_embed.validation import check_choice, check_positive_float, check_positive_int
from theory.engine.loop import Executor, run_groups
from theory.engine.record_shape import (
    FLAG,
    FRACTION,
    NUMBER,
    TEXT,
    WHOLE,
    Shape,
    list_of,
    optional,
    read_shaped,
    shape_by_record,
)
from theory.engine.records import dumps, failed_lines, record_cells, settings_digest, split_failed, to_run
from theory.engine.schema import check_keys, fill_tables, table, target_val_fractions, train_table
from theory.engine.seeding import stream_seed
from theory.studies.digits.domain_ratio import density_ratio_diagnostic
from theory.studies.digits.evaluation import DigitsModel, TestSet, evaluate_model, sample_metrics
from theory.studies.digits.image_grid import save_digit_grid
from theory.studies.digits.report import REFERENCE_LABEL, format_table, summarize
from theory.studies.digits.task import N_CLASSES, SUBPOPULATIONS, D, DigitsTask, check_ink_band, level_features
from theory.truth.metrics import FidelityClassifier

if TYPE_CHECKING:
    pass  # imported lazily at run time

HEADS = ("gaussian", "flow", "diffusion")
VARIANTS = ("transfer", "no_transfer", "fine_tune")
Log = Callable[[str], None]

#: head constructor options (beyond features / context_features) per head kind
DEFAULT_HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "gaussian": {"hidden": [64, 64]},
    "flow": {"backend": "zuko", "transform": "nsf", "transforms": 3, "hidden": [128, 128], "bins": 8},
    "diffusion": {
        "width": 256,
        "blocks": 3,
        "divergence": "hutchinson",
        "probes": 4,
        "rtol": 1e-5,
        "atol": 1e-5,
        "sampler": "ode",
    },
}
#: TrainConfig fields for the source and target phases per head kind
DEFAULT_TRAIN: dict[str, dict[str, dict[str, Any]]] = {
    "gaussian": {
        "source": {"steps": 3000, "batch_size": 128, "lr": 1e-3, "eval_every": 100, "patience": 10},
        "target": {"steps": 2000, "batch_size": 128, "lr": 1e-3, "eval_every": 20, "patience": 20},
    },
    "flow": {
        "source": {"steps": 4000, "batch_size": 128, "lr": 1e-3, "eval_every": 100, "patience": 10},
        "target": {"steps": 3000, "batch_size": 128, "lr": 1e-3, "eval_every": 20, "patience": 20},
    },
    "diffusion": {
        "source": {"steps": 6000, "batch_size": 128, "lr": 1e-3, "eval_every": 200, "patience": 10},
        "target": {"steps": 3000, "batch_size": 128, "lr": 1e-3, "eval_every": 50, "patience": 10},
    },
}


@dataclass
class DigitsExperiment:
    """The grid and its settings (see the module docstring); ``heads`` any of ``HEADS``.

    ``style``, ``heavy_fraction``, ``ink_tilt``, ``ink_band``: the target, as :class:`DigitsTask` takes them (each
    of the last three read by its style only; ``ink_band`` enters the settings only for its own style).

    ``nll_rows``: test images scored for NLL per head kind (absent / None: all ``10 * test_per_class``); the
    probability-flow likelihood of a diffusion head is the slow part (its divergence, probes and tolerances
    are head options: default Hutchinson with 4 Rademacher probes, dopri5 at rtol = atol = 1e-5). ``tgdp``: run the conditional TGDP
    variant for diffusion heads. ``grid_per_class``: images per class in the PNG grids. ``sample_options``: per
    head kind, call-time sampling settings of its ``sample`` (e.g. ``{"flow": {"temperature": 0.7}}``); the
    generated images and sample metrics use them, and each record also keeps the metrics of default sampling
    (``theory.studies.digits.evaluation``). TGDP cells sample with their own defaults.

    ``target_val_fraction``: per head kind, the share of the target rows held out for early stopping in the
    target phase (absent: ``val_fraction``; 0: every target row trains for the configured steps, the same budget
    for every variant).

    ``variant_train``: per variant (``transfer``, ``no_transfer``, ``fine_tune``), TrainConfig fields that
    override the head's target phase for that variant only (each baseline tuned on its own); a sub-table named
    after a head kind holds fields for that head alone, on top of the variant's own
    (``{"fine_tune": {"lr": 3e-6, "diffusion": {"epochs": 100}}}``: every head's fine_tune at lr 3e-6, the
    diffusion head's for 100 epochs as well). ``tune``: score
    every model on the target pool images beyond ``max(per_class)`` per class (training never sees them) instead
    of the test split, so settings can be chosen without touching the test images; needs
    ``pool_per_class > max(per_class)``.
    """

    style: str = "reflect"
    heavy_fraction: float = 0.35
    ink_tilt: float = 2.0
    ink_band: tuple[float, float] = (0.4, 0.6)
    per_class: Sequence[int] = (5, 15, 50)
    seeds: Sequence[int] = (0,)
    heads: Sequence[str] = ("flow", "diffusion")
    variants: Sequence[str] = VARIANTS
    source_only: bool = True
    tgdp: bool = False
    test_per_class: int = 30
    pool_per_class: int = 50
    gen_per_class: int = 30
    embed_dim: int = 4
    encoder_hidden: Sequence[int] = (64, 64)
    val_fraction: float = 0.2
    target_val_fraction: dict[str, float] = field(default_factory=dict)
    head_options: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_HEAD_OPTIONS))
    train: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_TRAIN))
    nll_rows: dict[str, int | None] = field(default_factory=dict)
    tgdp_options: dict[str, Any] = field(default_factory=dict)
    grid_per_class: int = 4
    variant_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    tune: bool = False
    sample_options: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # every head kind's options and phases, the defaults where the config is silent (one fingerprint either way)
        self.head_options = fill_tables(self.head_options, DEFAULT_HEAD_OPTIONS)
        self.train = fill_tables(self.train, DEFAULT_TRAIN, levels=2)
        self.per_class = tuple(sorted({check_positive_int("per_class", int(k)) for k in self.per_class}))
        if not self.per_class:
            raise ConfigError("per_class must list at least one target size (images per class)")
        if max(self.per_class) > self.pool_per_class:
            raise ConfigError(f"per_class {max(self.per_class)} exceeds pool_per_class {self.pool_per_class}")
        self.heads = tuple(check_choice("head", h, HEADS) for h in self.heads)
        self.variants = tuple(check_choice("variant", v, VARIANTS) for v in self.variants)
        self.seeds = tuple(int(s) for s in self.seeds)
        self.ink_band = check_ink_band(self.ink_band)
        check_positive_int("gen_per_class", self.gen_per_class, minimum=1)
        check_positive_int("embed_dim", self.embed_dim)
        for kind, phases in self.train.items():  # a bad field fails now, named by its path, not mid-run
            check_keys(table(phases, f"digits.train.{kind}"), ("source", "target"), f"digits.train.{kind}")
            for phase, fields_ in phases.items():
                train_table(fields_, f"digits.train.{kind}.{phase}")
        for kind, options in self.sample_options.items():
            _check_sample_options(kind, options)  # a bad option fails now, not mid-run
        target_val_fractions(self.target_val_fraction, HEADS)
        DigitsTask(
            self.style,
            self.test_per_class,
            self.pool_per_class,
            heavy_fraction=self.heavy_fraction,
            ink_tilt=self.ink_tilt,
            ink_band=self.ink_band,
        )
        for variant in self.variant_train:
            check_choice("variant_train variant", variant, VARIANTS)
            for head in HEADS:
                variant_overrides(self.variant_train, variant, head)  # checks both levels of the table
        if self.tune and self.pool_per_class <= max(self.per_class):
            raise ConfigError(
                f"tune needs pool_per_class > max(per_class) = {max(self.per_class)} (the held-out pool rows score "
                f"the models), got {self.pool_per_class}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_class"], d["seeds"], d["heads"], d["variants"] = (
            list(self.per_class),
            list(self.seeds),
            list(self.heads),
            list(self.variants),
        )
        d["encoder_hidden"] = list(self.encoder_hidden)
        # only the ink_band style reads its window: the other styles' settings (and run folders) stay as they were
        if self.style == "ink_band":
            d["ink_band"] = list(self.ink_band)
        else:
            del d["ink_band"]
        return d


def _check_sample_options(kind: str, options: Any) -> None:
    """ConfigError for a head kind outside ``HEADS``, options that are not a table or name an unknown option;
    DataError for a flow temperature that is not a finite number > 0."""
    check_choice("sample_options head", kind, HEADS)
    if not isinstance(options, dict):
        raise ConfigError(f"sample_options.{kind} must be a table of sampling options, got {options!r}")
    if kind == "flow":
        from flows import FlowHead

        FlowHead.split_options(options)
        if "temperature" in options:
            check_positive_float("sample_options.flow.temperature", options["temperature"])
    elif kind == "diffusion":
        from diffusion.head import DiffusionHead

        DiffusionHead.split_options(options)
    else:
        GaussianHead.split_options(options)


def head_factory(kind: str, options: dict[str, Any]) -> Callable[[int | None], Head]:
    """``factory(context_features) -> Head`` over the 64 pixels for a head kind of ``HEADS``."""
    check_choice("head", kind, HEADS)
    if kind == "gaussian":
        GaussianHead(D, None, **options)
        return lambda k: GaussianHead(D, k, **options)
    if kind == "flow":
        from flows import make_flow_head

        return make_flow_head(D, **options)
    try:
        from diffusion.head import DiffusionHead
    except ImportError as err:
        raise ConfigError(f"head 'diffusion' needs the diffusion package's DiffusionHead: {err}") from err
    DiffusionHead(D, None, **options)
    return lambda k: DiffusionHead(D, k, **options)


def _transfer_config(exp: DigitsExperiment, kind: str, seed: int) -> TransferConfig:
    phases = exp.train.get(kind, DEFAULT_TRAIN[kind])
    return TransferConfig(
        embed_dim=exp.embed_dim,
        encoder_hidden=tuple(exp.encoder_hidden),
        val_fraction=exp.val_fraction,
        source_train=TrainConfig(
            **{**phases["source"], "seed": cell_seed(seed, kind, 0, "source"), "description": f"{kind} source"}
        ),
        target_train=TrainConfig(
            **{**phases["target"], "seed": cell_seed(seed, kind, 0, "target"), "description": f"{kind} target"}
        ),
    )


def variant_overrides(variant_train: dict[str, dict[str, Any]], variant: str, head: str) -> dict[str, Any]:
    """The TrainConfig fields that override ``head``'s target phase for ``variant``: the variant's own fields,
    then those of its sub-table named ``head`` (ConfigError naming the table for an unknown or bad field)."""
    given = dict(table(variant_train.get(variant, {}), f"digits.variant_train.{variant}"))
    shared = train_table({k: v for k, v in given.items() if k not in HEADS}, f"digits.variant_train.{variant}")
    own = train_table(given.get(head, {}), f"digits.variant_train.{variant}.{head}")
    return {**shared, **own}


def cell_seed(seed: int, head: str, k: int, stream: str) -> int:
    """The 31-bit seed of one stream (a variant's fit, ``sample``, ``source``, ...) of the cell (seed, head, k):
    a digest of its coordinates, so adding a variant, a head or a target size changes no other cell's records."""
    return stream_seed("digits", seed, head, k, stream)


def _reference(
    task: DigitsTask, test: TestSet, clf: FidelityClassifier, gen_per_class: int, seed: int
) -> dict[str, Any]:
    """Real target-style digits (the classifier split, ``gen_per_class`` per class) scored like a generator."""
    pool = task.splits.classifier
    gen = torch.Generator().manual_seed(stream_seed("digits", seed, "reference"))
    rows = torch.cat(
        [
            torch.nonzero(pool.labels == k).squeeze(1)[
                torch.randperm(int((pool.labels == k).sum()), generator=gen)[:gen_per_class]
            ]
            for k in range(N_CLASSES)
        ]
    )
    real = pool.subset(rows)
    return sample_metrics(real.levels, real.labels, test, clf)


@dataclass(frozen=True)
class DigitsCell:
    """One (seed, head, k, variant) of the grid (k = 0: ``source_only``, and ``reference``, the real-image
    metrics of the seed, a cell of its first head) and where its record lives in a run folder."""

    seed: int
    head: str
    k: int
    variant: str

    @property
    def path(self) -> str:
        return f"cells/{self.head}/seed{self.seed}_k{self.k}_{self.variant}.json"


@dataclass(frozen=True)
class DigitsGroup:
    """The cells of one seed and head: they share the data, the classifier and the source model."""

    seed: int
    head: str
    cells: tuple[DigitsCell, ...]


def plan_digits(exp: DigitsExperiment) -> list[DigitsGroup]:
    """Every group of the grid, its cells in the order they run."""
    groups = []
    for seed in exp.seeds:
        for kind in exp.heads:
            cells = [DigitsCell(seed, kind, 0, "reference")] if kind == exp.heads[0] else []
            cells += [DigitsCell(seed, kind, 0, "source_only")] if exp.source_only else []
            for k in exp.per_class:
                cells += [DigitsCell(seed, kind, k, v) for v in exp.variants]
                cells += [DigitsCell(seed, kind, k, "tgdp")] if exp.tgdp and kind == "diffusion" else []
            groups.append(DigitsGroup(seed, kind, tuple(cells)))
    return groups


def study_settings(exp: DigitsExperiment) -> dict[str, Any]:
    """What makes two runs one study (the grid axes a rerun may extend left out): the folder's fingerprint, and
    what every cell's ``settings_hash`` digests."""
    d = exp.to_dict()
    for key in ("seeds", "per_class", "heads", "variants", "source_only", "tgdp"):
        d.pop(key)
    return {"experiment": {"kind": "digits"}, "digits": d}


def _pending(groups: list[DigitsGroup], out: Path | None, settings_hash: str) -> list[DigitsGroup]:
    """The groups with the cells to run: missing, unreadable (:func:`read_digits_record`) or failed records
    (:func:`theory.engine.records.to_run`)."""
    todo = [
        DigitsGroup(g.seed, g.head, tuple(to_run(g.cells, out, settings_hash, read=read_digits_record))) for g in groups
    ]
    return [g for g in todo if g.cells]


def run_digits_experiment(
    exp: DigitsExperiment | None = None,
    out_dir: str | Path | None = None,
    *,
    log: Log | None = None,
    workers: int = 1,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run the grid through the study engine (:mod:`theory.engine.loop`); with ``out_dir``, write one record per
    cell (a rerun runs the missing and failed ones), records.json, table.md and one PNG grid per (head, k) of the first seed.

    Returns:
        dict with records (one per seed, head, k, variant), summary, table (Markdown), grids (PNG paths),
        reference (real-image metrics per seed), seconds.
    """
    exp = exp or DigitsExperiment()
    code = code_fingerprint()  # the code as it was when the run started
    out = Path(out_dir) if out_dir is not None else None
    start = time.perf_counter()
    groups = plan_digits(exp)
    todo = _pending(groups, out, settings_digest(study_settings(exp)))
    ran = run_groups(run_digits_group, exp.to_dict(), out, todo, workers=workers, log=log, executor=executor)
    written, references = load_digits_records(exp, out) if out is not None else _split(ran)
    records, failed = split_failed(written)
    grids = sorted(str(p) for p in out.glob("digits_*_k*.png")) if out is not None else []
    result = {
        "records": records,
        "failed": failed_lines(failed, COORDINATES),
        "summary": summarize(records),
        "table": format_table(records, references),
        "grids": grids,
        "reference": references,
        "seconds": time.perf_counter() - start,
    }
    if out is not None:
        _write(out, exp, written, references, grids, code)
    return result


#: a digits record's coordinates (a reference cell has ``k`` instead of ``per_class`` and ``n_t``)
COORDINATES = ("seed", "head", "k", "per_class", "n_t", "variant")


def _split(ran: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """(every record but the finished reference cells, the real-image metrics of those by seed)."""
    done = [r["variant"] == "reference" and r.get("status", "ok") == "ok" for r in ran]
    references = {int(r["seed"]): r["reference"] for r, d in zip(ran, done) if d}
    return [r for r, d in zip(ran, done) if not d], references


def _coordinates(cell: DigitsCell) -> dict[str, Any]:
    """A cell's coordinates as its record names them (a failed record holds these and its error)."""
    if cell.variant == "reference":
        return {"seed": cell.seed, "head": cell.head, "k": 0, "variant": "reference"}
    return {
        "seed": cell.seed,
        "head": cell.head,
        "per_class": cell.k,
        "n_t": N_CLASSES * cell.k,
        "variant": cell.variant,
    }


#: what the report reads of TGDP's premise check (diffusion.tgdp.PremiseReport.to_dict)
_PREMISE_SHAPE: Shape = {
    "auc": NUMBER,
    "ess_fraction": NUMBER,
    "mean_weight": NUMBER,
    "failures": list_of(TEXT, nonempty=False),
    "ok": FLAG,
}
#: what the report reads of TGDP's guard (diffusion.tgdp.GuidedDiffusionModel.report) and gain prediction
_TGDP_SHAPE: Shape = {
    "status": TEXT,
    "refused": optional(TEXT, null=True),
    "limit": {"max_ratio": NUMBER, "action": TEXT, "refuse_fraction": NUMBER},
    "switch": NUMBER,
    "guard": optional({"rows": WHOLE, "exploded": WHOLE}, null=True),
    "probe": optional({"fraction": FRACTION, "max_ratio": NUMBER, "limit": NUMBER}, null=True),
    "premise": optional(_PREMISE_SHAPE, null=True),
    "predicted_gain": optional({"mean": NUMBER, "se": NUMBER, "rows": WHOLE}, null=True),
}
#: what the report reads of a fitted model's record (the main table, the copying flag, the TGDP tables)
MODEL_SHAPE: Shape = {
    "seed": WHOLE,
    "head": TEXT,
    "per_class": WHOLE,
    "variant": TEXT,
    **{key: NUMBER for key in ("nll", "nll_se", "bpd", "bpd_se", "fidelity", "mmd2", "w1")},
    "nll_per_image": list_of(NUMBER),
    "copying": optional({"closer_fraction": FRACTION, "distance_ratio": NUMBER, "null_sd": optional(NUMBER)}),
    "tgdp": optional(_TGDP_SHAPE),
    "premise": optional(_PREMISE_SHAPE),
}
#: what the report reads of a seed's real-image reference record
REFERENCE_SHAPE: Shape = {
    "seed": WHOLE,
    "reference": {
        **{key: NUMBER for key in ("fidelity", "classifier_test_accuracy", "mmd2", "w1")},
        "label": optional(TEXT),
        "selection_gain": optional({"mean": NUMBER, "se": NUMBER, "rows": WHOLE}),
        "domain_ratio": optional({"*": {"auc": NUMBER, "mean_weight": NUMBER, "ess_fraction": NUMBER}}),
    },
}
_SHAPE_OF = shape_by_record(MODEL_SHAPE, reference=REFERENCE_SHAPE)  # a failed record: the common fields only


def read_digits_record(path: Path, *, older: bool = False) -> dict[str, Any]:
    """A digits cell record (:func:`theory.engine.records.read_cell`) with every field the report reads checked
    (:data:`MODEL_SHAPE`, :data:`REFERENCE_SHAPE`): DataError naming the file and the fields otherwise, so a
    rerun recomputes the cell and a report never tabulates it."""
    return read_shaped(path, "digits record", _SHAPE_OF, older=older)


def load_digits_records(exp: DigitsExperiment, out: Path) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """(records, references per seed) of the cells of ``exp`` that ``out`` holds, in grid order; DataError
    naming a record that cannot be read."""
    ran = []
    for cell in (c for g in plan_digits(exp) for c in g.cells):
        path = out / cell.path
        if path.is_file() or path.is_symlink():
            try:
                ran.append(read_digits_record(path, older=True))
            except DataError as err:
                raise DataError(f"{err}: run the same command again to recompute it") from err
    return _split(ran)


def run_digits_group(
    spec: dict[str, Any], out: Path | None, group: DigitsGroup, log: Log | None, on_cell: Callable[[], None]
) -> list[dict[str, Any]]:
    """The engine's runner of this study: the group's shared fits, then its cells, each record sealed and
    written as soon as it is scored (a cell that raises: a failed record; :func:`theory.engine.records.record_cells`)."""
    exp, say = DigitsExperiment(**spec), log or (lambda _m: None)
    shared: dict[str, Any] = {}
    records = record_cells(
        group.cells,
        lambda: _prepare(exp, group, say, shared),
        coordinates=_coordinates,
        settings_hash=settings_digest(study_settings(exp)),
        path=lambda cell: None if out is None else out / cell.path,
        on_cell=on_cell,
        say=say,
    )
    if out is not None and group.seed == exp.seeds[0] and "test" in shared:
        _grids(exp, group.head, shared["test"], shared["generated"], out)
    return records


def _prepare(
    exp: DigitsExperiment, group: DigitsGroup, say: Log, shared: dict[str, Any]
) -> Callable[[DigitsCell], dict[str, Any]]:
    """The seed's data and classifier and the head's source model; returns ``one(cell) -> its record``. ``shared``
    receives the test set and the generated images (``test``, ``generated``) for the grids."""
    seed, kind = group.seed, group.head
    task = DigitsTask(
        exp.style,
        exp.test_per_class,
        exp.pool_per_class,
        seed,
        heavy_fraction=exp.heavy_fraction,
        ink_tilt=exp.ink_tilt,
        ink_band=exp.ink_band,
    )
    gen = torch.Generator().manual_seed(stream_seed("digits", seed, "dequantise"))
    source = task.paired(task.splits.source, gen)
    pool = task.paired(task.splits.target_pool, gen)  # rows ranked within class: head(10 k) = k per class
    test = (
        _tuning_set(task, max(exp.per_class), torch.Generator().manual_seed(stream_seed("digits", seed, "test")))
        if exp.tune
        else TestSet.build(task, torch.Generator().manual_seed(stream_seed("digits", seed, "test")))
    )
    clf = FidelityClassifier().fit(level_features(task.splits.classifier.levels), task.splits.classifier.labels)
    factory = head_factory(kind, exp.head_options.get(kind, DEFAULT_HEAD_OPTIONS[kind]))
    cfg = _transfer_config(exp, kind, seed)
    augment = task.pixels.redequantize
    generated: dict[int, dict[str, dict[str, Any]]] = {}
    shared.update(test=test, generated=generated)
    torch.manual_seed(cell_seed(seed, kind, 0, "source-init"))
    t0 = time.perf_counter()
    source_model = fit_source(
        new_encoder(N_CLASSES, cfg),
        factory(cfg.embed_dim),
        source,
        cfg.source_train,
        val_fraction=cfg.val_fraction,
        augment=augment,
    )
    cast(Encoder, source_model.encoder).freeze()
    src_seconds = time.perf_counter() - t0
    src_history = cast(TrainHistory, source_model.history)  # fit_source sets it
    say(
        f"seed {seed} {kind}: source fitted in {src_seconds:.0f}s ({src_history.steps_done} steps, "
        f"best at {src_history.best_step})"
    )

    def fit(cell: DigitsCell) -> tuple[DigitsModel, float, int]:
        if cell.variant == "source_only":
            return source_model, src_seconds, src_history.steps_done
        target = pool.head(N_CLASSES * cell.k)
        t0 = time.perf_counter()
        own = cell_seed(seed, kind, cell.k, cell.variant)
        torch.manual_seed(own)
        override = {**variant_overrides(exp.variant_train, cell.variant, kind), "seed": own}
        cfg_v = replace(
            cfg,
            val_fraction=exp.target_val_fraction.get(kind, exp.val_fraction),
            target_train=cfg.target_train.replace(**override),
        )
        if cell.variant == "tgdp":
            from theory.studies.digits.tgdp import fit_digits_tgdp

            model, steps = fit_digits_tgdp(
                source_model, source, target, cfg_v, exp.tgdp_options, augment, pixels=task.pixels
            )
            return model, time.perf_counter() - t0, steps
        fitted = fit_variants(
            factory, source, target, cfg_v, [cell.variant], source_model=source_model, augment=augment
        )[cell.variant]
        return fitted.model, time.perf_counter() - t0, cast(TrainHistory, fitted.model.history).steps_done

    def one(cell: DigitsCell) -> dict[str, Any]:
        if cell.variant == "reference":
            rec = {
                "seed": seed,
                "head": kind,
                "k": 0,
                "variant": "reference",
                "reference": _seed_reference(exp, task, test, clf, seed, exp.nll_rows.get(kind)),
            }
        else:
            model, fit_seconds, steps = fit(cell)
            rec, gen_draws = _score(exp, task, test, clf, cell, model, fit_seconds, steps, say)
            history = getattr(model, "history", None)
            if isinstance(history, TrainHistory):  # how many rows the fit trained on and held out for stopping
                rec["rows"] = {"train": history.n_train, "val": history.n_val}
            if cell.variant == "tgdp":  # TGDP's GuidedDiffusionModel: its premise check and probe (made before
                from diffusion.tgdp import GuidedDiffusionModel, predict_gain  # sampling), what its guard did in
                # the solves and the gain its ratio predicts over the source model (diffusion.tgdp.gain_prediction)

                if not isinstance(model, GuidedDiffusionModel):
                    raise ConfigError(f"the tgdp cell fitted a {type(model).__name__}, not a GuidedDiffusionModel")
                guard = model.report()
                rows = len(cast(list, rec["nll_per_image"]))  # the scored test images: the gain is compared on them
                why_not = no_gain_prediction(model.switch, exp.tgdp_options)
                guard["predicted_gain"] = None
                if why_not is None:  # against the rows the ratio reweights: the source rows or the model's draws
                    from theory.studies.digits.tgdp import ratio_reference

                    own = cell_seed(seed, kind, cell.k, cell.variant)  # the seed the tgdp fit drew them with
                    ref = ratio_reference(source_model, source, exp.tgdp_options, own)
                    ref_c = cast(torch.Tensor, ref.c)  # the source's labels, which ratio_reference keeps
                    guard["predicted_gain"] = predict_gain(model, test.z[:rows], test.c[:rows], ref.x, ref_c).to_dict()
                guard["no_prediction"] = why_not
                rec["tgdp"] = guard
                if guard["premise"] is not None:
                    rec["premise"] = guard["premise"]
            generated.setdefault(cell.k, {}).update(gen_draws)
        return rec

    return one


def no_gain_prediction(switch: float, tgdp_options: dict[str, Any]) -> str | None:
    """Why a fitted TGDP is not the reweighted source model p w / E_p[w], so no gain prediction holds for it
    (None: it is): a switch time > 0 (the source score alone below it), or the consistency regulariser (its
    guidance is fitted to the target rows' denoising loss, a correction beyond any reweighting)."""
    if switch > 0:
        return f"switch time {switch:g} > 0: the source score alone below it"
    if float(tgdp_options.get("eta_consistency", 0.0)) > 0:
        return "eta_consistency > 0: the guidance is fitted to the target rows, not only to a ratio"
    return None


def _tuning_set(task: DigitsTask, skip: int, generator: torch.Generator) -> TestSet:
    """The target pool images beyond the first ``skip`` per class (no model trains on them), dequantised once,
    as a stand-in test set for tuning."""
    pool = task.splits.target_pool
    images = pool.subset(torch.arange(N_CLASSES * skip, len(pool)))
    y = task.pixels.dequantize(images.levels, generator, dtype=torch.float32)
    return TestSet(images, images.one_hot(torch.float32), y, task.pixels.to_logit(y)[0])


def _seed_reference(
    exp: DigitsExperiment, task: DigitsTask, test: TestSet, clf: FidelityClassifier, seed: int, nll_rows: int | None
) -> dict[str, Any]:
    ref = _reference(task, test, clf, exp.gen_per_class, seed)
    ref["classifier_test_accuracy"] = clf.accuracy(test.features, test.images.labels)
    # a sub-population style leaves the pixels as they are: its classifier split is the source split's own
    # images, real digits but not the sub-population the test set is drawn from
    ref["label"] = "real source-split digits" if task.style in SUBPOPULATIONS else REFERENCE_LABEL
    # the gain over the source of the target's exact ratio to it, on the NLL rows: in expectation the most any
    # reweighting of the source gains (DigitsTask.selection_log_ratio)
    if task.style in SUBPOPULATIONS:
        from diffusion.tgdp import reweighting_gain

        scored = test.images.subset(torch.arange(len(test.images))[:nll_rows])
        source = task.splits.source
        ref["selection_gain"] = reweighting_gain(
            task.selection_log_ratio(scored), scored.labels, task.selection_log_ratio(source), source.labels
        ).to_dict()
    ref["domain_ratio"] = {
        str(k): density_ratio_diagnostic(
            task.splits.source, task.target_train(k), seed=stream_seed("digits", seed, k, "domain-ratio")
        )
        for k in exp.per_class
    }
    return ref


def _score(
    exp: DigitsExperiment,
    task: DigitsTask,
    test: TestSet,
    clf: FidelityClassifier,
    cell: DigitsCell,
    model: DigitsModel,
    fit_seconds: float,
    steps: int,
    say: Log,
) -> tuple[dict[str, Any], dict]:
    """A cell's record (held-out NLL, fidelity, MMD^2, W1, timings) and its generated images by band name (the
    variant; with sampling options also "<variant>, default sampling")."""
    seed, kind, k = cell.seed, cell.head, cell.k
    ev = evaluate_model(
        model,
        task,
        test,
        clf,
        gen_per_class=exp.gen_per_class,
        seed=cell_seed(seed, kind, k, "sample"),  # every variant of (seed, head, k) alike: paired
        nll_rows=exp.nll_rows.get(kind),
        sample_options=None if cell.variant == "tgdp" else exp.sample_options.get(kind),
        train=task.target_train(k) if k > 0 else None,  # source_only saw no target image
    )
    generated = ev.pop("generated")
    default = ev.pop("generated_default", None)
    rec = {
        "seed": seed,
        "head": kind,
        "per_class": k,
        "n_t": N_CLASSES * k,
        "variant": cell.variant,
        "fit_seconds": fit_seconds,
        "steps": steps,
        **ev,
    }
    say(
        f"seed {seed} {kind:9s} k={k:3d} {cell.variant:12s} NLL {rec['nll']:8.2f} nats ({rec['bpd']:.3f} bpd) "
        f"fid {rec['fidelity']:.3f} MMD2 {rec['mmd2']:.4f} W1 {rec['w1']:.3f} "
        f"[fit {fit_seconds:.0f}s, {steps} steps; eval {rec['eval_seconds']:.0f}s]"
    )
    draws = {cell.variant: {"levels": generated[0], "labels": generated[1]}}
    if default is not None:
        draws[f"{cell.variant}, default sampling"] = {"levels": default[0], "labels": default[1]}
    return rec, draws


def _grids(
    exp: DigitsExperiment, kind: str, test: TestSet, generated: dict[int, dict[str, dict[str, Any]]], out: Path
) -> None:
    """One PNG grid per k: real test images beside every variant generated in this run (source_only too), and
    with sampling options each variant's default-sampling draws as well."""
    real = test.images
    for k in exp.per_class:
        draws = {**generated.get(k, {}), **generated.get(0, {})}  # k = 0: source_only (and its default sampling)
        if not draws:
            continue
        bands = {"real target (test)": real.levels, **{v: g["levels"] for v, g in draws.items()}}
        labels = {"real target (test)": real.labels, **{v: g["labels"] for v, g in draws.items()}}
        save_digit_grid(
            bands,
            labels,
            out / f"digits_{kind}_k{k}.png",
            exp.grid_per_class,
            title=f"{kind} head, target style '{exp.style}', {k} images per class",
        )


def code_fingerprint() -> dict[str, str]:
    """sha256 (first 12 hex digits) of every module of the packages a run depends on, keyed by path."""
    root = Path(__file__).resolve().parents[3]
    out = {}
    for package in ("shared_embed", "flows", "diffusion", "theory/studies/digits"):
        for path in sorted((root / package).glob("*.py")):
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return out


def _write(
    out: Path,
    exp: DigitsExperiment,
    records: list[dict[str, Any]],
    references: dict[int, Any],
    grids: list[str],
    code: dict[str, str],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "experiment": exp.to_dict(),
        "reference": {str(k): v for k, v in references.items()},
        "records": records,
        "grids": grids,
        "code": code,
    }
    atomic_write_text(out / "records.json", dumps(payload))
    atomic_write_text(out / "table.md", format_table(split_failed(records)[0], references) + "\n")
