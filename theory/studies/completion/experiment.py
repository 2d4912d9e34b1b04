"""The completion study's grid: for every seed, head and target size k (images per class), the variants
``transfer``, ``no_transfer``, ``fine_tune`` and ``direct`` of :func:`shared_embed.transfer.fit_variants`, plus
``source_only`` (the source model applied to the target, no target data), each scored by
:func:`theory.studies.completion.evaluation.evaluate`.

The encoder maps the observed top half c (32) to d_h = ``embed_dim``; ``direct`` puts the head on c itself
(32 context features, no encoder). Training redraws the dequantisation noise of every batch
(``augment=redequantize``). Cells of one (seed, head) form a group: they share the data and the source model.

Example:
    >>> from theory.studies.completion.study import parse   # the shipped config with its seconds-long preset
    >>> experiment = parse(read_config(resolve_config(Path("completion")), "smoke"))[1]
    >>> result = run_completion_experiment(experiment, out_dir="out")
    >>> print(result["table"])
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from shared_embed.encoder import Encoder
from shared_embed.errors import ConfigError, DataError
from shared_embed.head import Head
from shared_embed.train import TrainConfig, TrainHistory
from shared_embed.transfer import TransferConfig, fit_source, fit_variants, new_encoder
from shared_embed.validation import check_choice, check_positive_int
from theory.engine.loop import Executor, run_groups
from theory.engine.record_shape import NUMBER, TEXT, WHOLE, Shape, list_of, read_shaped, shape_by_record
from theory.engine.records import record_cells, settings_digest, split_failed, to_run
from theory.engine.schema import check_keys, fill_tables, table, target_val_fractions, train_table
from theory.engine.seeding import derived_seed, stream_seed
from theory.studies.completion.evaluation import evaluate, fit_classifier, real_fidelity, test_rows
from theory.studies.completion.task import HALF, N_CLASSES, CompletionTask, redequantize

HEADS = ("flow", "diffusion")
VARIANTS = ("transfer", "no_transfer", "fine_tune", "direct")
Log = Callable[[str], None]

DEFAULT_HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "flow": {"backend": "zuko", "transform": "nsf", "transforms": 3, "hidden": [128, 128], "bins": 8},
    "diffusion": {"width": 128, "blocks": 2, "divergence": "exact", "rtol": 1e-4, "atol": 1e-4, "sampler": "ode"},
}
DEFAULT_TRAIN: dict[str, dict[str, dict[str, Any]]] = {
    "flow": {
        "source": {"steps": 3000, "batch_size": 128, "lr": 1e-3, "eval_every": 100, "patience": 10},
        "target": {"steps": 1500, "batch_size": 64, "lr": 1e-3, "eval_every": 20, "patience": 20},
    },
    "diffusion": {
        "source": {"steps": 4000, "batch_size": 128, "lr": 1e-3, "eval_every": 200, "patience": 10},
        "target": {"steps": 1500, "batch_size": 64, "lr": 1e-3, "eval_every": 50, "patience": 10},
    },
}


@dataclass
class CompletionExperiment:
    """The grid and its settings (module docstring). ``nll_rows``: test images scored for NLL per head kind
    (absent: all ``10 * test_per_class``); ``target_val_fraction``: per head kind, the share of the target rows
    held out for early stopping in the target phase (absent: ``val_fraction``; 0: every target row trains for the
    configured steps, the same budget for every variant); ``gen_rows``: test images completed for fidelity and MSE;
    ``grid_per_class`` x 10 test images are completed ``grid_draws`` times for the PNG grid."""

    style: str = "thicken"
    per_class: Sequence[int] = (2, 10)
    seeds: Sequence[int] = (0, 1, 2)
    heads: Sequence[str] = HEADS
    variants: Sequence[str] = VARIANTS
    source_only: bool = True
    test_per_class: int = 30
    pool_per_class: int = 20
    embed_dim: int = 8
    encoder_hidden: Sequence[int] = (128, 128)
    val_fraction: float = 0.2
    target_val_fraction: dict[str, float] = field(default_factory=dict)
    head_options: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_HEAD_OPTIONS))
    train: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_TRAIN))
    nll_rows: dict[str, int] = field(default_factory=dict)
    gen_rows: int = 100
    grid_per_class: int = 1
    grid_draws: int = 2

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
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        check_positive_int("embed_dim", self.embed_dim)
        check_positive_int("gen_rows", self.gen_rows, minimum=2)
        check_positive_int("grid_per_class", self.grid_per_class)
        check_positive_int("grid_draws", self.grid_draws)
        if self.grid_per_class > self.test_per_class:
            raise ConfigError(f"grid_per_class {self.grid_per_class} exceeds test_per_class {self.test_per_class}")
        for kind, phases in self.train.items():  # a bad field fails now, named by its path, not mid-run
            check_choice("train head", kind, HEADS)
            check_keys(table(phases, f"completion.train.{kind}"), ("source", "target"), f"completion.train.{kind}")
            for phase, fields_ in phases.items():
                train_table(fields_, f"completion.train.{kind}.{phase}")
        target_val_fractions(self.target_val_fraction, HEADS)
        for kind, rows in self.nll_rows.items():
            check_choice("nll_rows head", kind, HEADS)
            check_positive_int(f"nll_rows.{kind}", rows, minimum=2)
        for kind in self.heads:
            head_factory(kind, self.options(kind))
        CompletionTask(self.style, self.test_per_class, self.pool_per_class)

    def options(self, kind: str) -> dict[str, Any]:
        """The head constructor options of head kind ``kind`` (the config's, else ``DEFAULT_HEAD_OPTIONS``)."""
        return self.head_options.get(kind, DEFAULT_HEAD_OPTIONS[kind])

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-able data (lists for the sequences): config.json and the study fingerprint."""
        d = asdict(self)
        for key in ("per_class", "seeds", "heads", "variants", "encoder_hidden"):
            d[key] = list(getattr(self, key))
        return d


def head_factory(kind: str, options: dict[str, Any]) -> Callable[[int | None], Head]:
    """``factory(context_features) -> Head`` over the 32 bottom-half pixels; checks ``options`` now."""
    check_choice("head", kind, HEADS)
    if kind == "flow":
        from flows import make_flow_head

        return make_flow_head(HALF, **options)
    from diffusion.head import DiffusionHead

    DiffusionHead(HALF, None, **options)
    return lambda k: DiffusionHead(HALF, k, **options)


def transfer_config(exp: CompletionExperiment, kind: str, seed: int) -> TransferConfig:
    """The encoder shape and both training phases of head kind ``kind`` for grid seed ``seed``: the source phase
    seeded by its own stream, the target phase by the seed's (each cell reseeds it: :func:`cell_seed`)."""
    phases = exp.train.get(kind, DEFAULT_TRAIN[kind])
    return TransferConfig(
        embed_dim=exp.embed_dim,
        encoder_hidden=tuple(exp.encoder_hidden),
        val_fraction=exp.val_fraction,
        source_train=TrainConfig(
            **{**phases.get("source", {}), "seed": cell_seed(seed, kind, 0, "source"), "description": f"{kind} source"}
        ),
        target_train=TrainConfig(
            **{**phases.get("target", {}), "seed": cell_seed(seed, kind, 0, "target"), "description": f"{kind} target"}
        ),
    )


def cell_seed(seed: int, head: str, k: int, stream: str) -> int:
    """The 31-bit seed of one stream (a variant's fit, ``sample``, ``source``, ...) of the cell (seed, head, k):
    a digest of its coordinates (:func:`theory.engine.seeding.derived_seed`), so adding a variant or a head
    changes no other cell's records."""
    return stream_seed("completion", seed, head, k, stream)


@dataclass(frozen=True)
class CompletionCell:
    """One (seed, head, k, variant); k = 0 for ``source_only`` and for ``reference`` (the real images' fidelity,
    a cell of the seed's first head). ``path``: where its record lives in a run folder."""

    seed: int
    head: str
    k: int
    variant: str

    @property
    def path(self) -> str:
        return f"cells/{self.head}/seed{self.seed}_k{self.k}_{self.variant}.json"


@dataclass(frozen=True)
class CompletionGroup:
    """The cells of one seed and head: they share the data and the source model."""

    seed: int
    head: str
    cells: tuple[CompletionCell, ...]


def plan(exp: CompletionExperiment) -> list[CompletionGroup]:
    """Every group of the grid, its cells in the order they run."""
    groups = []
    for seed in exp.seeds:
        for kind in exp.heads:
            cells = [CompletionCell(seed, kind, 0, "reference")] if kind == exp.heads[0] else []
            cells += [CompletionCell(seed, kind, 0, "source_only")] if exp.source_only else []
            cells += [CompletionCell(seed, kind, k, v) for k in exp.per_class for v in exp.variants]
            groups.append(CompletionGroup(seed, kind, tuple(cells)))
    return groups


def run_completion_experiment(
    exp: CompletionExperiment | None = None,
    out_dir: str | Path | None = None,
    *,
    log: Log | None = None,
    workers: int = 1,
    executor: Executor | None = None,
) -> dict[str, Any]:
    """Run the grid through the study engine; with ``out_dir``, one record per cell (a rerun runs the missing and failed ones).

    Returns: dict with records (reference cells apart), references (per seed), seconds.
    """
    exp = exp or CompletionExperiment()
    out = Path(out_dir) if out_dir is not None else None
    start = time.perf_counter()
    groups = plan(exp)
    settings_hash = settings_digest(study_settings(exp))
    read_record = functools.partial(read_completion_record, exp=exp)
    groups = [
        g
        for g in (
            CompletionGroup(g.seed, g.head, tuple(to_run(g.cells, out, settings_hash, read=read_record)))
            for g in groups
        )
        if g.cells
    ]
    ran = run_groups(run_completion_group, exp.to_dict(), out, groups, workers=workers, log=log, executor=executor)
    records = load_records(exp, out) if out is not None else ran
    return {**split_references(records), "seconds": time.perf_counter() - start}


#: a completion record's coordinates
COORDINATES = ("seed", "head", "per_class", "n_t", "variant")


def study_settings(exp: CompletionExperiment) -> dict[str, Any]:
    """What makes two runs one study (the grid axes a rerun may extend left out): the folder's fingerprint, and
    what every cell's ``settings_hash`` digests."""
    d = exp.to_dict()
    for key in ("seeds", "per_class", "heads", "variants", "source_only"):
        d.pop(key)
    return {"experiment": {"kind": "completion"}, "completion": d}


def split_references(ran: list[dict[str, Any]]) -> dict[str, Any]:
    """{"records": the finished model cells (non-finite floats restored), "failed": the failed cells,
    "references": real-image fidelity per seed}."""
    ok, failed = split_failed(ran)
    return {
        "records": [r for r in ok if r["variant"] != "reference"],
        "failed": failed,
        "references": {int(r["seed"]): r["real_fidelity"] for r in ok if r["variant"] == "reference"},
    }


def model_shape(grid_rows: int) -> Shape:
    """What the report reads of a fitted model's record (the table, the paired differences, the completion grids
    of ``grid_rows`` drawn bottom halves: 10 x grid_per_class test images x grid_draws)."""
    return {
        "seed": WHOLE,
        "head": TEXT,
        "per_class": WHOLE,
        "variant": TEXT,
        **{key: NUMBER for key in ("nll", "nll_se", "bpd", "bpd_se", "fidelity", "completion_mse")},
        "nll_per_image": list_of(NUMBER),
        "grid_bottoms": list_of(list_of(WHOLE, length=HALF), length=grid_rows),
    }


#: what the report reads of a seed's real-image reference record
REFERENCE_SHAPE: Shape = {"seed": WHOLE, "head": TEXT, "variant": TEXT, "real_fidelity": NUMBER}


def read_completion_record(path: Path, exp: CompletionExperiment, *, older: bool = False) -> dict[str, Any]:
    """A completion cell record of ``exp`` with every field the report reads checked (:func:`model_shape`,
    :data:`REFERENCE_SHAPE`; nothing beyond the common fields for a failed one); DataError naming the file and the
    fields otherwise, so a rerun recomputes it."""
    model = model_shape(N_CLASSES * exp.grid_per_class * exp.grid_draws)
    return read_shaped(path, "completion record", shape_by_record(model, reference=REFERENCE_SHAPE), older=older)


def load_records(exp: CompletionExperiment, out: Path) -> list[dict[str, Any]]:
    """The records of ``exp``'s cells that ``out`` holds, in grid order; DataError naming an unreadable one."""
    ran = []
    for cell in (c for g in plan(exp) for c in g.cells):
        path = out / cell.path
        if path.is_file() or path.is_symlink():
            try:
                ran.append(read_completion_record(path, exp, older=True))
            except DataError as err:
                raise DataError(f"{err}: run the same command again to recompute it") from err
    return ran


def run_completion_group(
    spec: dict[str, Any], out: Path | None, group: CompletionGroup, log: Log | None, on_cell: Callable[[], None]
) -> list[dict[str, Any]]:
    """The engine's runner of this study: the group's shared fits, then its cells, each record sealed and
    written as soon as it is scored (a cell that raises: a failed record; :func:`theory.engine.records.record_cells`)."""
    exp, say = CompletionExperiment(**spec), log or (lambda _m: None)
    return record_cells(
        group.cells,
        lambda: _prepare(exp, group, say),
        coordinates=_coordinates,
        settings_hash=settings_digest(study_settings(exp)),
        path=lambda cell: None if out is None else out / cell.path,
        on_cell=on_cell,
        say=say,
    )


def _coordinates(cell: CompletionCell) -> dict[str, Any]:
    """A cell's coordinates as its record names them (a failed record holds these and its error)."""
    return {"seed": cell.seed, "head": cell.head, "per_class": cell.k, "n_t": 10 * cell.k, "variant": cell.variant}


def _prepare(exp: CompletionExperiment, group: CompletionGroup, say: Log) -> Callable[[CompletionCell], dict[str, Any]]:
    """The seed's data and classifier and the head's source model; returns ``one(cell) -> its record``."""
    seed, kind = group.seed, group.head
    task = CompletionTask(exp.style, exp.test_per_class, exp.pool_per_class, seed)
    gen = torch.Generator().manual_seed(derived_seed("completion", seed, "dequantise"))
    source, pool = task.paired(task.source, gen), task.paired(task.pool, gen)
    clf = fit_classifier(task)
    factory = head_factory(kind, exp.options(kind))
    cfg = transfer_config(exp, kind, seed)
    target_cfg = dataclasses.replace(cfg, val_fraction=exp.target_val_fraction.get(kind, exp.val_fraction))
    grid = test_rows(task, exp.grid_per_class)
    torch.manual_seed(cell_seed(seed, kind, 0, "source-init"))
    t0 = time.perf_counter()
    source_model = fit_source(
        new_encoder(HALF, cfg),
        factory(cfg.embed_dim),
        source,
        cfg.source_train,
        val_fraction=cfg.val_fraction,
        augment=redequantize,
    )
    cast(Encoder, source_model.encoder).freeze()
    src_seconds = time.perf_counter() - t0
    say(
        f"seed {seed} {kind}: source fitted in {src_seconds:.0f}s ({cast(TrainHistory, source_model.history).steps_done} steps, "
        f"best at {cast(TrainHistory, source_model.history).best_step})"
    )

    def one(cell: CompletionCell) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "seed": seed,
            "head": kind,
            "per_class": cell.k,
            "n_t": 10 * cell.k,
            "variant": cell.variant,
        }
        if cell.variant == "reference":
            rec.update(real_fidelity=real_fidelity(task, clf, exp.gen_rows))
        else:
            if cell.variant == "source_only":
                model, fit_seconds, steps = (
                    source_model,
                    src_seconds,
                    cast(TrainHistory, source_model.history).steps_done,
                )
            else:
                t1 = time.perf_counter()
                own = cell_seed(seed, kind, cell.k, cell.variant)
                torch.manual_seed(own)
                fitted = fit_variants(
                    factory,
                    source,
                    pool.head(10 * cell.k),
                    dataclasses.replace(target_cfg, target_train=target_cfg.target_train.replace(seed=own)),
                    [cell.variant],
                    source_model=source_model,
                    augment=redequantize,
                )[cell.variant]
                model, fit_seconds, steps = (
                    fitted.model,
                    time.perf_counter() - t1,
                    cast(TrainHistory, fitted.model.history).steps_done,
                )
            rec.update(
                fit_seconds=fit_seconds,
                steps=steps,
                **evaluate(
                    model,
                    task,
                    clf,
                    seed=cell_seed(seed, kind, cell.k, "sample"),  # every variant of (seed, k) alike: paired
                    nll_rows=exp.nll_rows.get(kind),
                    gen_rows=exp.gen_rows,
                    grid_rows=grid,
                    grid_draws=exp.grid_draws,
                ),
            )
            say(
                f"seed {seed} {kind:9s} k={cell.k:2d} {cell.variant:11s} NLL {rec['nll']:8.2f} nats "
                f"({rec['bpd']:.3f} bpd) fid {rec['fidelity']:.2f} mse {rec['completion_mse']:.4f} "
                f"[fit {fit_seconds:.0f}s, {steps} steps; eval {rec['eval_seconds']:.0f}s]"
            )
        return rec

    return one
