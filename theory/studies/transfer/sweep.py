"""Experiment sweeps: every (head, n_s, n_t, seed, variant) cell of a config, in parallel, resumable.

Layout of a run folder ``DIR``:

    DIR/config.json                              the resolved config of the latest run
    DIR/study.json                               the study the folder belongs to (:mod:`theory.engine.run_folder`)
    DIR/predictions.json                         the predicted exponents, stored when the config was run
    DIR/cells/HEAD/ns{N_S|none}/nt{N_T}_seed{S}_{VARIANT}.json   one record per cell (written atomically)
    DIR/groups/HEAD/ns{N_S}_seed{S}.json         the source fit and embedding floor of a (head, n_s, seed)
    DIR/models/HEAD/ns{N_S}_seed{S}_{source|floor}.safetensors   those models, reused when a sweep resumes
    DIR/samples/HEAD/...json                     draws of each fitted model at fixed conditions (first seed)
    DIR/results.csv                              every record's scalar fields

Work is split into groups that share a source model: (head, n_s, seed) for the variants that use the source
(transfer, fine_tune), and (head, seed) for those that do not (no_transfer, oracle: their cells have
n_s = None and serve every n_s). Groups run in worker processes (``spawn``); a cell whose record is on
disk and finished is skipped, so a killed sweep resumes where it stopped (the resume rule of every study:
:func:`theory.engine.records.cell_state`).

Data are drawn in fixed blocks from seeds derived from (seed, stream, block), so the n_t target pairs of a
cell are the first n_t of one stream whatever the grid holds (nested samples, n_s likewise), and every
variant of a seed is scored on the same fresh evaluation sample (paired comparisons).

The fitting and scoring are ``shared_embed.transfer.fit_variants`` and ``theory.truth.kl`` (``log_densities``,
``monte_carlo_kl``, ``fit_floor_model``, ``kl_to_task``), as in ``theory.studies.transfer.summary``, whose one-call
grid this module splits into persisted cells.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from shared_embed.checkpoint import atomic_write_text, config_diff
from shared_embed.data import PairedData
from shared_embed.device import resolve_device
from shared_embed.encoder import Encoder
from shared_embed.errors import CheckpointError, ConfigError, GentransferError
from shared_embed.head import Head
from shared_embed.model import ConditionalModel
from shared_embed.train import TrainHistory
from shared_embed.transfer import (
    TransferConfig,
    fit_source,
    fit_variants,
    min_fit_rows,
    new_encoder,
    train_model,
)
from theory.engine.config import PHASES, ExperimentConfig, task_label
from theory.engine.folder_lock import hold_folder
from theory.engine.loop import Executor, duration, run_cells, run_groups
from theory.engine.records import cell_state, failed_record, seal, write_cell
from theory.engine.run_folder import (
    check_no_links,
    claim_folder,
    collect_records,
    failed_cells,
    flagged_cells,
    inside,
    read_json,
    read_record,
    study_predictions,
    write_json,
    write_predictions,
)
from theory.engine.seeding import derived_seed, stream_seed
from theory.studies.transfer.costs import deal_by_cost, group_cost
from theory.truth.kl import fit_floor_model, kl_to_task, log_densities, monte_carlo_kl
from theory.truth.tasks import Task
from theory.verdicts.controls import (
    blind_factory,
    broken_source,
    broken_target,
    data_seed,
    distort_kl,
    eval_domain,
    eval_seed,
    in_sample_log_densities,
    wrong_variance_task,
)

SOURCE_VARIANTS = ("transfer", "fine_tune")
BLOCK = 256
FLOOR = "__floor__"
Log = Callable[[str], None]
#: Scalar record fields, in CSV column order (others follow alphabetically).
CSV_FIELDS = (
    "head",
    "head_kind",
    "n_s",
    "n_t",
    "seed",
    "variant",
    "status",
    "kl",
    "kl_se",
    "n_eval",
    "floor",
    "floor_se",
    "floor_paired",
    "head_term",
    "head_term_se",
    "floor_n",
    "bound",
    "bound_se",
    "bound_n",
    "fit_seconds",
    "eval_seconds",
    "source_seconds",
    "floor_seconds",
    "bound_seconds",
    "steps",
    "best_val",
    "settings_hash",
    "error",
    "finished_at",
)


# -- cells and groups ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Cell:
    """One grid point; ``n_s`` is None for variants that do not use the source."""

    head: str
    n_s: int | None
    n_t: int
    seed: int
    variant: str
    task: str = ""  #: label of the grid task ("" when the grid has the config's task only)

    @property
    def path(self) -> str:
        ns = "none" if self.n_s is None else str(self.n_s)
        where = f"{self.task}/" if self.task else ""
        return f"cells/{where}{self.head}/ns{ns}/nt{self.n_t}_seed{self.seed}_{self.variant}.json"

    def __str__(self) -> str:
        where = f"[{self.task}] " if self.task else ""
        return f"{where}{self.head} n_s={self.n_s} n_t={self.n_t} seed={self.seed} {self.variant}"


@dataclass(frozen=True)
class Group:
    """Cells sharing (head, n_s, seed): one source model (when n_s is not None) serves them all."""

    head: str
    n_s: int | None
    seed: int
    cells: tuple[Cell, ...]
    task: str = ""

    @property
    def stem(self) -> str:
        where = f"{self.task}/" if self.task else ""
        return f"{where}{self.head}/ns{self.n_s}_seed{self.seed}"

    def cost(self) -> float:
        """A rough work estimate, to start the big groups first."""
        return (self.n_s or 0) / 1000 + sum(c.n_t for c in self.cells) / 1000 + len(self.cells)


def plan_cells(config: ExperimentConfig) -> list[Cell]:
    """Every cell of the config's grid."""
    g = config.grid
    labels = [task_label(t) for t in g.tasks]
    cells: list[Cell] = []
    for task in labels:
        for head in g.heads:
            wanted = config.heads[head].variants
            for seed in g.seeds:
                for variant in [v for v in g.variants if wanted is None or v in wanted]:
                    for n_s in g.n_s if variant in SOURCE_VARIANTS else [None]:
                        cells.extend(Cell(head, n_s, n_t, seed, variant, task) for n_t in g.n_t)
    return cells


def plan_groups(cells: Iterable[Cell]) -> list[Group]:
    """Group cells by (task, head, n_s, seed), biggest first."""
    by_key: dict[tuple[str, str, int | None, int], list[Cell]] = {}
    for c in cells:
        by_key.setdefault((c.task, c.head, c.n_s, c.seed), []).append(c)
    groups = [Group(h, ns, s, tuple(cs), t) for (t, h, ns, s), cs in by_key.items()]
    return sorted(groups, key=lambda g: -g.cost())


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N: this process runs shard I of N (see :func:`shard_cells`)."""
    index, sep, count = text.strip().partition("/")
    if not (sep and index.isdigit() and count.isdigit()):
        raise ConfigError(f"shard must look like I/N with 0 <= I < N (e.g. 0/2 and 1/2), got {text!r}")
    return _check_shard((int(index), int(count)))


def _check_shard(shard: tuple[int, int]) -> tuple[int, int]:
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise ConfigError(f"shard must be I/N with 0 <= I < N (e.g. 0/2 and 1/2), got {index}/{count}")
    return shard


def shard_cells(config: ExperimentConfig, cells: Iterable[Cell], shard: tuple[int, int]) -> list[Cell]:
    """The cells of shard (I, N): whole groups of ALL the grid's groups, dealt by estimated cost (biggest first,
    each to the shard with the least so far: :func:`theory.studies.transfer.costs.deal_by_cost`), so every shard gets its share
    of the costly heads, not a block of one head.

    The deal depends on the config only, never on what is already on disk, so N processes or hosts given
    ``0/N`` ... ``N-1/N`` (on a shared folder, or folders merged afterwards) run every cell exactly once.
    """
    index, count = _check_shard(shard)
    groups = plan_groups(plan_cells(config))
    deal = deal_by_cost([group_cost(config, g) for g in groups], count)
    mine = {g.stem for g, s in zip(groups, deal) if s == index}
    return [c for c in cells if Group(c.head, c.n_s, c.seed, (), c.task).stem in mine]


def pending_cells(config: ExperimentConfig, out_dir: Path) -> tuple[list[Cell], list[Cell]]:
    """(cells to run, cells already on disk). A failed or unreadable record is run again; a finished record
    from other settings is an error, not a skip."""
    todo: list[Cell] = []
    done: list[Cell] = []
    for cell in plan_cells(config):
        task = config.grid.task_overrides(cell.task)

        def differences(record: dict[str, Any], head: str = cell.head, task: dict[str, Any] = task) -> list[str]:
            return config_diff(config.settings(head, task), record.get("settings", {}))

        state = cell_state(
            out_dir / cell.path, config.settings_hash(cell.head, task), read=read_record, differences=differences
        )
        (todo if state == "run" else done).append(cell)
    return todo, done


def estimated_seconds(config: ExperimentConfig, cells: Iterable[Cell]) -> float:
    """Estimated CPU-seconds of ``cells`` on one thread (:func:`theory.studies.transfer.costs.group_cost`; the
    steps are the configured caps, so this is an upper estimate for fits that stop early)."""
    return sum(group_cost(config, g) for g in plan_groups(cells))


def module_digest(module: torch.nn.Module) -> str:
    """SHA-256 of a module's parameters and buffers (names, shapes and bytes): equal iff bit for bit equal."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 of tensors' shapes and bytes (a sample's conditions, a generator's state): a record names its
    samples, so seeds that share one are caught."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# -- deterministic data ----------------------------------------------------------------------------
def nested_sample(task: Task, n: int, domain: str, seed: int, stream: str) -> PairedData:
    """The first n pairs of a stream drawn in blocks of ``BLOCK``: the same rows whatever n asks for.

    With ``instance = "per_seed"`` tasks, seed s draws its data from its own task instance (task seed s).
    """
    parts = []
    for b in range(math.ceil(n / BLOCK)):
        gen = torch.Generator().manual_seed(derived_seed(seed, stream, domain, b))
        parts.append(task.sample(BLOCK, domain, gen))
    c = torch.cat([cast(torch.Tensor, p.c) for p in parts])[:n]  # a conditional task's pairs hold conditions
    x = torch.cat([p.x for p in parts])[:n]
    return PairedData(c, x)


def sample_contexts(task: Task, k: int) -> torch.Tensor:
    """The k fixed conditions (k, d_c) at which the plots compare samples of each model with the truth."""
    return task.sample_c(k, torch.Generator().manual_seed(derived_seed("contexts", k)))


def eval_generator(seed: int, stream: str = "eval") -> torch.Generator:
    return torch.Generator().manual_seed(derived_seed(seed, stream))


# -- building blocks of a worker --------------------------------------------------------------------
def head_factory(config: ExperimentConfig, head: str, d_x: int) -> Callable[[int | None], Head]:
    """``factory(context_features) -> Head`` for the named head of the config."""
    spec = config.heads[head]
    cls = spec.head_class()

    def factory(context_features: int | None) -> Head:
        return cls(d_x, context_features, **spec.options)

    factory.config = {"kind": spec.kind, "features": d_x, **spec.options}  # type: ignore[attr-defined]
    return factory


def transfer_config(config: ExperimentConfig, head: str, seed: int, d_h: int | None = None) -> TransferConfig:
    """The workflow settings of a cell; ``d_h`` (the task's) sizes an encoder configured as ``embed_dim = "d_h"``."""
    e = config.encoder_for(head)
    if e["embed_dim"] == "d_h" and d_h is None:
        raise ConfigError("encoder.embed_dim = 'd_h' needs the task's d_h")
    return TransferConfig(
        embed_dim=cast(int, d_h if e["embed_dim"] == "d_h" else e["embed_dim"]),
        encoder_hidden=tuple(e["hidden"]),
        encoder_activation=e["activation"],
        source_train=config.train_config(head, "source", seed),
        target_train=config.train_config(head, "target", seed),
        val_fraction=e["val_fraction"],
        device=config.run.device,
    )


def _flag(hist: Any) -> dict[str, str]:
    """``{"flag": why}`` for a fit that ended worse than its initial model on the validation pairs (a far too
    large learning rate, or too few pairs to learn from): a result to doubt, listed by the report."""
    if hist.improved:
        return {}
    return {
        "flag": f"the target fit never beat its initial model on the validation pairs (best loss "
        f"{hist.best_val:.4g} vs {hist.initial_val:.4g} at step 0): lower train.target.lr or raise n_t"
    }


@dataclass
class _Shared:
    """What a group's cells share: the source model, the floor model and their bookkeeping."""

    source: ConditionalModel | None = None
    floor: ConditionalModel | None = None
    info: dict[str, Any] = field(default_factory=dict)


class GroupRunner:
    """Runs the cells of one group in this process; every record is written as soon as it is scored."""

    def __init__(
        self,
        config: ExperimentConfig,
        out_dir: Path,
        group: Group,
        log: Log | None = None,
        on_cell: Callable[[], None] | None = None,
    ) -> None:
        self.config, self.out, self.group = config, Path(out_dir), group
        self.say = log or (lambda _msg: None)
        self.on_cell = on_cell or (lambda: None)
        overrides = config.grid.task_overrides(group.task)
        self.task = config.task.build(seed=group.seed, overrides=overrides)
        #: the truth KL is scored against: the task itself, unless a control distorts it
        self.eval_task = wrong_variance_task(self.task) if config.control == "wrong_truth_variance" else self.task
        self.stream = f"{group.task}/" if group.task else ""
        factory = head_factory(config, group.head, self.task.d_x)
        self.factory = blind_factory(factory) if config.control == "context_blind" else factory
        self.tcfg = transfer_config(config, group.head, group.seed, self.task.d_h)
        self.settings = config.settings(group.head, overrides)
        self.hash = config.settings_hash(group.head, overrides)
        self.device = resolve_device(config.run.device)

    def _identity(self, role: str) -> dict[str, Any]:
        """What a cached model of this group was fitted for: its group, role (source or floor) and settings
        digest; a model saved for another is refused on load (and refitted), never used."""
        return {"group": self.group.stem, "role": role, "settings_hash": self.hash}

    # shared pieces
    def _source_and_floor(self, source: PairedData) -> _Shared:
        """The group's source model (loaded when a previous run saved it, else fitted and saved) and, when a
        transfer cell needs it, the embedding-floor model of its encoder."""
        g, cfg = self.group, self.config
        shared = _Shared()
        info_path = self.out / f"groups/{g.stem}.json"
        src_path = self.out / f"models/{g.stem}_source.safetensors"
        floor_path = self.out / f"models/{g.stem}_floor.safetensors"
        info = read_json(info_path)
        floor_n = cfg.eval_setting(g.head, "floor_n")
        want_floor = floor_n > 0 and any(c.variant == "transfer" for c in g.cells)
        if info is not None and info.get("settings_hash") != self.hash:  # never overwrite another study's cache
            raise ConfigError(f"{info_path} was computed with other settings; use a new --out folder")
        if info is not None and src_path.is_file():
            try:
                shared.source = ConditionalModel.load(src_path, identity=self._identity("source")).to(self.device)
                if want_floor and info.get("floor") is not None and floor_path.is_file():
                    shared.floor = ConditionalModel.load(floor_path, identity=self._identity("floor")).to(self.device)
                shared.info = info
                self.say(f"[{g.stem}] source model loaded from {src_path.name}")
            except CheckpointError as err:  # a corrupted cache of this study: rebuilt below
                shared = _Shared()
                self.say(f"[{g.stem}] cached model unreadable, fitting it again ({err})")
        if shared.source is None:
            torch.manual_seed(derived_seed(g.seed, g.n_s, "source-init"))
            start = time.perf_counter()
            shared.source = fit_source(
                new_encoder(cast(int, source.d_c), self.tcfg),
                self.factory(self.tcfg.embed_dim),
                source.to(self.tcfg.device),
                self.tcfg.source_train,
                val_fraction=self.tcfg.val_fraction,
            )
            seconds = time.perf_counter() - start
            history = cast(TrainHistory, shared.source.history)  # fit_source sets it
            shared.info = {
                "head": g.head,
                "n_s": g.n_s,
                "seed": g.seed,
                "settings_hash": self.hash,
                "source_seconds": seconds,
                "source_steps": history.steps_done,
                "source_best_val": history.best_val,
                "floor": None,
                "source_improved": history.improved,
            }
            if cfg.control == "random_encoder":  # negative control: transfer gets an untrained encoder
                torch.manual_seed(derived_seed(g.seed, "random-encoder"))  # one encoder per seed, every n_s
                shared.source.encoder = new_encoder(cast(int, source.d_c), self.tcfg).to(self.device).freeze()
            shared.info["source_encoder_digest"] = module_digest(cast(nn.Module, shared.source.encoder))
            shared.source.save(inside(self.out, src_path), identity=self._identity("source"))
            self.say(f"[{g.stem}] source fitted in {seconds:.1f}s ({history.steps_done} steps)")
        if want_floor and shared.floor is None:
            torch.manual_seed(derived_seed(g.seed, g.n_s, "floor-init"))
            start = time.perf_counter()
            shared.floor = fit_floor_model(
                self.task,
                shared.source,
                self.factory,
                n=floor_n,
                train=cfg.train_config(g.head, "floor", stream_seed(g.seed, g.n_s, "floor")),
                generator=torch.Generator().manual_seed(derived_seed(g.seed, g.n_s, "floor-data")),
                val_fraction=0.1,
            )
            fit_seconds = time.perf_counter() - start
            est = kl_to_task(
                self.eval_task,
                shared.floor,
                domain=eval_domain(cfg.control),
                n=cfg.eval_setting(g.head, "n_eval"),
                generator=eval_generator(eval_seed(g.seed, cfg.control), "floor-eval"),
            )
            shared.floor.save(inside(self.out, floor_path), identity=self._identity("floor"))
            shared.info.update(
                floor=est.value,
                floor_se=est.se,
                floor_n=floor_n,
                floor_seconds=time.perf_counter() - start,
                floor_fit_seconds=fit_seconds,
            )
            self.say(f"[{g.stem}] embedding floor {est} (head fitted on {floor_n} target pairs)")
        write_json(inside(self.out, info_path), shared.info)
        return shared

    def run(self) -> list[dict[str, Any]]:
        """Fit and score every cell of the group; returns the records written."""
        g, control = self.group, self.config.control
        seed = data_seed(g.seed, control)
        pool = nested_sample(self.task, max(c.n_t for c in g.cells), "target", seed, f"{self.stream}target")
        cells = sorted(g.cells, key=lambda c: (c.n_t, c.variant))
        if g.n_s is None:  # source-free variants: fit_variants reads only the source's shape
            return self._each(cells, lambda cell: self._run_cell(cell, _Shared(), pool, pool.head(cell.n_t)))
        source = nested_sample(self.task, g.n_s, "source", seed, f"{self.stream}source")
        source = broken_source(source, control, torch.Generator().manual_seed(derived_seed(g.seed, "shuffle")))
        try:
            shared = self._source_and_floor(source)
        except ConfigError:
            raise
        except GentransferError as err:  # e.g. a diverged source fit: every cell of the group records it
            error = f"source/floor fit failed: {type(err).__name__}: {err}"
            return self._each(cells, lambda cell: self._failed(cell, error))
        return self._each(cells, lambda cell: self._run_cell(cell, shared, source, pool.head(cell.n_t)))

    def _each(self, cells: list[Cell], run_one: Callable[[Cell], dict[str, Any]]) -> list[dict[str, Any]]:
        return run_cells(cells, run_one, self.on_cell)

    def _base(self, cell: Cell) -> dict[str, Any]:
        t = self.task
        return {
            "head": cell.head,
            "head_kind": self.config.heads[cell.head].kind,
            "n_s": cell.n_s,
            "n_t": cell.n_t,
            "seed": cell.seed,
            "variant": cell.variant,
            "settings_hash": self.hash,
            "task": cell.task,
            "task_name": self.config.task.name,
            "embedding": getattr(t, "embedding_kind", "user"),
            "task_seed": t.seed,
            "d_c": t.d_c,
            "d_h": t.d_h,
            "d_x": t.d_x,
            "embed_dim": self.tcfg.embed_dim,
            "control": self.config.control,
        }

    def _failed(self, cell: Cell, error: str) -> dict[str, Any]:
        coordinates = {**self._base(cell), "torch": torch.__version__, "settings": self.settings}
        record = write_cell(inside(self.out, self.out / cell.path), failed_record(coordinates, self.hash, error))
        self.say(f"[{cell}] FAILED: {error}")
        return record

    def _run_cell(self, cell: Cell, shared: _Shared, source: PairedData, target: PairedData) -> dict[str, Any]:
        base = {
            **self._base(cell),
            "source_seconds": shared.info.get("source_seconds", 0.0) if cell.variant in SOURCE_VARIANTS else 0.0,
        }
        cell_seed = stream_seed(cell.head, cell.n_s, cell.n_t, cell.seed, cell.variant)
        target = broken_target(target, self.config.control)
        tcfg = replace(self.tcfg, target_train=self.tcfg.target_train.replace(seed=cell_seed))
        try:
            torch.manual_seed(cell_seed)
            start = time.perf_counter()
            fitted = fit_variants(
                self.factory,
                source,
                target,
                tcfg,
                [cell.variant],
                oracle_embedding=getattr(self.task, "embedding", None),
                source_model=shared.source,
            )[cell.variant]
            if cell.variant == "transfer" and self.config.control == "trainable_encoder":
                cast(
                    Encoder, fitted.model.encoder
                ).unfreeze()  # negative control: the encoder keeps learning on the target
                train_model(fitted.model, target, tcfg.target_train, tcfg.val_fraction)
                cast(Encoder, fitted.model.encoder).freeze()
            fit_seconds = time.perf_counter() - start
            hist = fitted.histories["target"]
            record = {
                **base,
                **self._score(cell, fitted.model, shared.floor, shared.info, target),
                "target_digest": tensor_digest(cast(torch.Tensor, target.c)),
            }
            if not math.isfinite(record["kl"]):
                return self._failed(
                    cell,
                    f"the KL estimate is {record['kl']} (the model's log-density is not "
                    "finite on some evaluation pairs)",
                )
            if cell.variant == "transfer":
                record.update(
                    encoder_digest=module_digest(cast(nn.Module, fitted.model.encoder)),
                    source_encoder_digest=shared.info.get("source_encoder_digest"),
                )
            record.update(
                fit_seconds=fit_seconds,
                steps=hist.steps_done,
                best_val=hist.best_val,
                initial_val=hist.initial_val,
                **_flag(hist),
            )
            self._samples(cell, fitted.model, cell_seed)
        except GentransferError as err:  # a diverged fit: recorded, reported, retried by the next run
            return self._failed(cell, f"{type(err).__name__}: {err}")
        record.update(torch=torch.__version__, settings=self.settings)
        record = write_cell(inside(self.out, self.out / cell.path), seal(record, settings_hash=self.hash))
        extra = (
            f" = floor {record['floor_paired']:.4f} + head {record['head_term']:.4f}" if "head_term" in record else ""
        )
        self.say(
            f"[{cell}] KL {record['kl']:.4f} +- {record['kl_se']:.4f}{extra} "
            f"({record['fit_seconds']:.1f}s fit, {record['eval_seconds']:.1f}s eval)"
        )
        return record

    def _score(
        self,
        cell: Cell,
        model: ConditionalModel,
        floor: ConditionalModel | None,
        info: dict[str, Any],
        target: PairedData,
    ) -> dict[str, Any]:
        cfg = self.config
        start = time.perf_counter()
        models: dict[str, Any] = {"model": model}
        if cell.variant == "transfer" and floor is not None:
            models[FLOOR] = floor
        generator = eval_generator(eval_seed(cell.seed, cfg.control))
        eval_digest = tensor_digest(generator.get_state())  # names the evaluation draw: seeds must not share it
        if cfg.control == "in_sample_kl":  # negative control: scored on the fit's own training pairs
            log_p, log_q = in_sample_log_densities(self.eval_task, models, target)
        else:
            log_p, log_q = log_densities(
                self.eval_task,
                models,
                domain=eval_domain(cfg.control),
                n=cfg.eval_setting(cell.head, "n_eval"),
                generator=generator,
            )
        est = monte_carlo_kl(log_p, log_q["model"])
        out: dict[str, Any] = {"kl": est.value, "kl_se": est.se, "n_eval": est.n, "eval_digest": eval_digest}
        if FLOOR in log_q:
            paired = monte_carlo_kl(log_p, log_q[FLOOR])
            head = monte_carlo_kl(log_q[FLOOR], log_q["model"])
            out.update(
                floor=info["floor"],
                floor_se=info["floor_se"],
                floor_n=info["floor_n"],
                floor_seconds=info.get("floor_seconds", 0.0),
                floor_paired=paired.value,
                floor_paired_se=paired.se,
                head_term=head.value,
                head_term_se=head.se,
            )
        out = distort_kl(out, cfg.control)
        out["eval_seconds"] = time.perf_counter() - start
        if cfg.heads[cell.head].kind == "diffusion":
            out.update(self._bound(cell, model))
        return out

    def _bound(self, cell: Cell, model: ConditionalModel) -> dict[str, Any]:
        """The Girsanov bound on KL for a diffusion head (``theory.truth.bounds.girsanov_bound_for``), and the kNN KL of
        the head's reverse-SDE law that it bounds (``theory.truth.bounds.sde_kl_for``, on 2 x bound_n draws a side)."""
        n = self.config.eval_setting(cell.head, "bound_n")
        if n <= 0:
            return {}
        from theory.truth.bounds import girsanov_bound_for, sde_kl_for

        start = time.perf_counter()
        est = girsanov_bound_for(self.task, model, n=n, generator=eval_generator(cell.seed, "bound"))
        sde = sde_kl_for(self.task, model, n=2 * n, generator=eval_generator(cell.seed, "kl_sde"))
        return {
            "bound": est.value,
            "bound_se": est.se,
            "bound_n": est.n,
            "kl_sde": sde.value,
            "kl_sde_se": sde.se,
            "kl_sde_n": sde.n,
            "bound_seconds": time.perf_counter() - start,
        }

    def _samples(self, cell: Cell, model: ConditionalModel, cell_seed: int) -> None:
        cfg = self.config
        if cell.seed != min(cfg.grid.seeds) or cfg.evaluation.sample_n <= 0:
            return
        contexts = sample_contexts(self.task, cfg.evaluation.sample_contexts)
        torch.manual_seed(cell_seed + 1)
        with torch.no_grad():
            draws = [model.sample(cfg.evaluation.sample_n, c.to(self.device)).cpu().tolist() for c in contexts]
        write_json(
            inside(self.out, self.out / cell.path.replace("cells/", "samples/", 1)),
            {"cell": cell.__dict__, "contexts": contexts.tolist(), "samples": draws},
        )


# -- the sweep --------------------------------------------------------------------------------------
def run_transfer_group(
    spec: dict[str, Any], out_dir: Path | None, group: Group, log: Log | None, on_cell: Callable[[], None]
) -> list[dict[str, Any]]:
    """The engine's runner of this study (:mod:`theory.engine.loop`): one group of cells, in this process."""
    assert out_dir is not None, "a sweep writes its records to a folder"
    return GroupRunner(ExperimentConfig.from_dict(spec), out_dir, group, log, on_cell).run()


@dataclass
class SweepResult:
    """What a sweep did: cells run now, cells found on disk, failed cells (one line each: where and why),
    wall time, the CSV path."""

    ran: int
    skipped: int
    failed: int
    seconds: float
    csv_path: Path
    failures: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)


def write_config(config: ExperimentConfig, out_dir: Path) -> None:
    """Store the resolved config with the run (the report reads it back)."""
    write_json(out_dir / "config.json", config.to_dict())


def min_target_pairs(d_h: int, d_x: int) -> int:
    """The fewest target pairs a cell may have: d_h + d_x + 2. The simplest head, a Gaussian linear in the
    d_h-dimensional embedding, has d_h + 1 coefficients per coordinate; d_x + 1 residual degrees of freedom
    more make its d_x x d_x covariance identifiable. Fewer pairs give a KL that measures nothing."""
    return d_h + d_x + 2


def _check_rows(config: ExperimentConfig, task: Task, where: str) -> None:
    """ConfigError when a variant of the grid would fit fewer rows than its context needs
    (:func:`shared_embed.transfer.min_fit_rows`: context features + 2)."""
    embed = task.d_h if config.encoder.embed_dim == "d_h" else cast(int, config.encoder.embed_dim)
    context = {"transfer": embed, "no_transfer": embed, "fine_tune": embed, "oracle": task.d_h, "direct": task.d_c}
    for head in config.grid.heads:
        wanted = config.heads[head].variants
        exact = callable(getattr(config.heads[head].head_class(), "fit_closed_form", None))
        for variant in [v for v in config.grid.variants if wanted is None or v in wanted]:
            if variant == "direct" and not exact:
                continue  # a trained head on c is early-stopped and needs only rows (the library says so)
            need = min_fit_rows(context[variant])
            sizes = {"n_t": min(config.grid.n_t)}
            if variant in SOURCE_VARIANTS:
                sizes["n_s"] = min(config.grid.n_s)
            for axis, n in sizes.items():
                if n < need:
                    raise ConfigError(
                        f"grid.{axis} = {n}: variant {variant} of head {head} fits a model on a "
                        f"{context[variant]}-feature context and needs at least {need} pairs "
                        f"(context features + 2; task {where})"
                    )


def check_study(config: ExperimentConfig) -> None:
    """Build every task, head, encoder and training config of ``config`` once, before any cell runs: a bad
    option value or a grid too small for the task is a ConfigError naming it, never a failed cell."""
    for overrides in config.grid.tasks:
        task = config.task.build(seed=min(config.grid.seeds), overrides=overrides)
        low = min_target_pairs(task.d_h, task.d_x)
        if min(config.grid.n_t) < low:
            raise ConfigError(
                f"grid.n_t = {config.grid.n_t}: a cell needs at least d_h + d_x + 2 = {low} target "
                f"pairs (task {task_label(overrides) or config.task.name}: d_h = {task.d_h}, "
                f"d_x = {task.d_x})"
            )
        _check_rows(config, task, task_label(overrides) or config.task.name)
        for head in config.grid.heads:
            try:
                tcfg = transfer_config(config, head, 0, task.d_h)
                factory = head_factory(config, head, task.d_x)
                for features in {tcfg.embed_dim, task.d_h}:
                    factory(features)
                new_encoder(task.d_c, tcfg)
                for phase in PHASES:
                    config.train_config(head, phase, 0)
            except (GentransferError, TypeError, ValueError, KeyError, RuntimeError) as err:
                raise ConfigError(
                    f"heads.{head} ({config.heads[head].kind}) does not build with these options: "
                    f"{type(err).__name__}: {err}"
                ) from err
            _check_exact_rank(config, head, tcfg, task)


def _check_exact_rank(config: ExperimentConfig, head: str, tcfg: TransferConfig, task: Task) -> None:
    """A linear encoder under a linear-Gaussian head is fitted by reduced-rank regression, which identifies at
    most d_x directions of c: refuse a larger embedding before any cell runs."""
    cls = config.heads[head].head_class()
    if (
        not tcfg.encoder_hidden
        and getattr(cls, "exact_with_linear_encoder", False)
        and tcfg.embed_dim > min(task.d_c, task.d_x)
    ):
        raise ConfigError(
            f"heads.{head}: a linear encoder (hidden = []) under a {config.heads[head].kind} head is "
            f"reduced-rank regression, which needs embed_dim <= min(d_c, d_x) = "
            f"{min(task.d_c, task.d_x)}; got embed_dim = {tcfg.embed_dim} (task d_c = {task.d_c}, "
            f"d_h = {task.d_h}, d_x = {task.d_x}): give the encoder hidden layers or a smaller embed_dim"
        )


def run_sweep(
    config: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    *,
    workers: int | None = None,
    log: Log | None = print,
    shard: tuple[int, int] = (0, 1),
    executor: Executor | None = None,
    max_hours: float | None = None,
) -> SweepResult:
    """Run every missing (or failed) cell of ``config`` into ``out_dir``; then collect all records into
    results.csv.

    Before anything is computed: every head and encoder is built once, the predictions are computed (a bad
    rate function fails here) and the folder is claimed for this study (another study's folder is refused).
    ``workers`` (default ``config.run.workers``) > 1 runs groups in that many ``spawn``-ed processes, each
    with ``config.run.threads`` torch threads, which exit when this process dies; 1 runs them in this process.
    ``shard`` = (I, N) runs only the groups of shard I of N (:func:`shard_cells`), to spread one sweep over
    several hosts. ``executor`` (:mod:`theory.engine.executors`: dask, SLURM) runs the groups there instead.
    ``max_hours``: refuse (ConfigError, with the estimate) cells estimated at more CPU-hours than this.
    """
    out = Path(out_dir)
    workers = config.run.workers if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    check_study(config)
    rates = study_predictions(config)
    with hold_folder(out, shard):
        return _sweep(config, out, workers, log, shard, executor, rates, max_hours)


def _sweep(
    config: ExperimentConfig,
    out: Path,
    workers: int,
    log: Log | None,
    shard: tuple[int, int],
    executor: Executor | None,
    rates: dict[str, Any],
    max_hours: float | None,
) -> SweepResult:
    """:func:`run_sweep` in a folder this process holds."""
    check_no_links(out)
    _check_cost(config, _unfinished(config, out, shard), workers, max_hours)  # before the folder is claimed
    claim_folder(config, out, log)
    todo, done = pending_cells(config, out)
    if shard != (0, 1):
        todo = shard_cells(config, todo, shard)
    write_predictions(config, out, rates)
    write_config(config, out)
    say = log or (lambda _msg: None)
    groups = plan_groups(todo)
    say(
        f"{len(todo)} cells to run in {len(groups)} groups ({len(done)} already on disk), "
        f"{min(workers, max(len(groups), 1))} worker(s)"
    )
    start = time.perf_counter()
    run_groups(
        run_transfer_group,
        config.to_dict(),
        out,
        groups,
        workers=workers,
        threads=config.run.threads,
        log=log,
        executor=executor,
        cost=lambda g: group_cost(config, g),
    )
    seconds = time.perf_counter() - start
    records = collect_records(out, config)
    csv_path = write_csv(records, out / "results.csv")
    failures = failed_cells(records)
    return SweepResult(
        ran=len(todo),
        skipped=len(done),
        failed=len(failures),
        seconds=seconds,
        csv_path=csv_path,
        failures=failures,
        flagged=flagged_cells(records),
    )


def _unfinished(config: ExperimentConfig, out: Path, shard: tuple[int, int]) -> list[Cell]:
    """The cells of ``shard`` with no finished record in ``out`` (read only; nothing checked but the status)."""
    cells = [c for c in plan_cells(config) if (read_json(out / c.path) or {}).get("status") != "ok"]
    return cells if shard == (0, 1) else shard_cells(config, cells, shard)


#: cells to run above which a run asked to check its cost (``max_hours``) stops, as for too many CPU-hours
MAX_CELLS = 10_000


def _check_cost(config: ExperimentConfig, todo: list[Cell], workers: int, max_hours: float | None) -> None:
    """ConfigError stating the estimate when ``todo`` is estimated at more than ``max_hours`` CPU-hours, or
    holds more than :data:`MAX_CELLS` cells."""
    if max_hours is None or not todo:
        return
    seconds = estimated_seconds(config, todo)
    if len(todo) > MAX_CELLS:
        raise ConfigError(
            f"this run has {len(todo)} cells to run, more than {MAX_CELLS} (estimated at "
            f"{duration(seconds)} of CPU time; about {duration(seconds / workers)} on {workers} "
            "worker(s)): rerun with --yes to start it (or make the grid smaller)"
        )
    if seconds > max_hours * 3600:
        raise ConfigError(
            f"this run is estimated at {duration(seconds)} of CPU time ({len(todo)} cells; about "
            f"{duration(seconds / workers)} on {workers} worker(s)), more than {max_hours:g} h: "
            "rerun with --yes to start it (or make the grid smaller)"
        )


# -- records ------------------------------------------------------------------------------------------
def write_csv(records: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """One row per record, its scalar fields as columns (``CSV_FIELDS`` first); written atomically."""
    keys = {k for r in records for k, v in r.items() if not isinstance(v, (dict, list))}
    columns = [k for k in CSV_FIELDS if k in keys] + sorted(keys - set(CSV_FIELDS))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())
    return Path(path)
