"""Experiment configs: a TOML file parsed into validated dataclasses, every key overridable from the command line.

A config has these tables (all optional except ``grid``; see ``configs/default.toml`` for a commented one):

    [experiment]  name, description, control (a deliberately broken pipeline, a negative control of
                  ``theory.verdicts.controls``; "" for the real pipeline)
    [task]        name (theory.truth.tasks.TASKS, conditional tasks), its keyword arguments (d_c, d_h, d_x, ...) and
                  instance ("per_seed": every grid seed draws its own task instance; "fixed": one instance,
                  from the task's own ``seed`` option)
    [grid]        n_s, n_t, seeds (lists of ints), heads (names of [heads.*] tables), variants, tasks (a list
                  of task-option tables, e.g. [{d_c = 4}, {d_c = 16}]: one task per entry, the [task]
                  options overridden; a dimension-law study sweeps them)
    [heads.NAME]  kind ("flow" | "diffusion" | "gaussian" | "linear_gaussian"), options = {head constructor
                  kwargs}, n_eval / floor_n / bound_n (per-head overrides), variants (a subset of the grid's),
                  [heads.NAME.train.source|target|floor]
    [encoder]     embed_dim (an int, or "d_h": each task's own), hidden ([] : a linear encoder), activation,
                  val_fraction; a head may override hidden and activation ([heads.NAME.encoder])
    [train.source], [train.target], [train.floor]   shared_embed.train.TrainConfig fields
    [evaluation]  n_eval, floor_n (0: no embedding floor), bound_n, sample_n, sample_contexts
    [theory]      beta, rate ("auto", "analytic", "generic" or "package.module:function"), log_power, confidence, margin,
                  flat_margin
    [run]         workers, threads, device

Unknown keys raise :class:`~shared_embed.errors.ConfigError` naming the key and the valid ones. Overrides
``key.sub=value`` (``--set`` on the command line) take TOML values (``grid.n_t=[50,100]``,
``train.target.lr=3e-4``); a value that is not valid TOML is taken as a string (``heads.flow.options.backend=nflows``).

Example:
    >>> cfg = load_config("configs/default.toml", ["grid.seeds=[0]", "run.workers=1"])
    >>> cfg.grid.seeds
    [0]
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Annotated, Any, TypeVar

from shared_embed.errors import ConfigError
from shared_embed.train import TrainConfig
from shared_embed.transfer import VARIANTS
from shared_embed.validation import check_choice, check_positive_float
from theory.engine.config_files import (  # noqa: F401  (re-exported: read here, validated below)
    PRESETS,
    apply_override,
    apply_preset,
    parse_value,
    read_config,
    read_toml,
    resolve_config,
    shipped_configs,
)
from theory.engine.schema import (
    MAX_PAIRS,
    Range,
    Reader,
    check_keys,
    dataclass_from_table,
    int_list,
    integer,
    str_list,
    string,
    train_table,
    widths,
)
from theory.engine.schema import (
    table as as_table,
)
from theory.engine.vocabulary import Vocabulary

T = TypeVar("T")
HEAD_KINDS = ("flow", "diffusion", "gaussian", "linear_gaussian")
CONDITIONAL_TASKS = ("conditional_gaussian", "conditional_mixture")
PHASES = ("source", "target", "floor")
HEAD_KEYS = ("kind", "options", "train", "n_eval", "floor_n", "bound_n", "variants", "encoder")
#: [encoder] keys a head may override for itself (e.g. a linear encoder, hidden = [], for a linear head).
HEAD_ENCODER_KEYS = ("hidden", "activation")
#: TrainConfig fields the sweep owns (seeded per cell, no progress bars, no checkpoints).
SWEEP_OWNED_TRAIN = ("seed", "progress", "description", "checkpoint_path", "checkpoint_every", "resume")
TRAIN_KEYS = tuple(f.name for f in fields(TrainConfig) if f.name not in SWEEP_OWNED_TRAIN)
#: Default training of each phase, the flow settings of configs/flow_transfer.toml (early stopping throughout).
DEFAULT_TRAIN: dict[str, dict[str, Any]] = {
    "source": {"steps": 5000, "batch_size": 256, "lr": 1e-3, "eval_every": 100, "patience": 10},
    "target": {"steps": 2000, "batch_size": 256, "lr": 1e-3, "eval_every": 20, "patience": 15},
    "floor": {"steps": 3000, "batch_size": 512, "lr": 1e-3, "eval_every": 100, "patience": 10},
}
DEFAULT_HEAD_OPTIONS: dict[str, dict[str, Any]] = {
    "flow": {"backend": "zuko", "transform": "nsf", "transforms": 2, "hidden": [32, 32], "bins": 6},
    "diffusion": {},
    "gaussian": {"hidden": [64, 64]},
    "linear_gaussian": {},
}
TASK_INSTANCES = ("per_seed", "fixed")


# -- the sections --------------------------------------------------------------------------------
@dataclass
class TaskSpec:
    """A conditional ground-truth task of ``theory.truth.tasks``: its name, constructor keyword arguments and whether
    each grid seed draws its own instance (``instance = "per_seed"``, the default) or all share one."""

    name: str = "conditional_gaussian"
    options: dict[str, Any] = field(default_factory=dict)
    instance: str = "per_seed"

    @classmethod
    def parse(cls, table: dict[str, Any]) -> TaskSpec:
        from theory.truth.tasks import task_class

        table = dict(table)
        name = table.pop("name", "conditional_gaussian")
        if not isinstance(name, str):
            raise ConfigError(f"task.name must be a string, got {name!r}")
        instance = check_choice("task.instance", table.pop("instance", "per_seed"), TASK_INSTANCES)
        valid = [p for p in inspect.signature(task_class(name, CONDITIONAL_TASKS)).parameters]
        check_keys(table, valid + ["name", "instance"], "task")
        if instance == "per_seed" and "seed" not in valid:
            raise ConfigError(
                f"task {name!r} takes no 'seed' argument, so every grid seed cannot draw its own instance: give it "
                'a seed parameter, or set task.instance = "fixed"'
            )
        return cls(name, table, instance)

    def check_overrides(self, overrides: dict[str, Any], where: str) -> None:
        from theory.truth.tasks import task_class

        valid = [p for p in inspect.signature(task_class(self.name, CONDITIONAL_TASKS)).parameters if p != "seed"]
        check_keys(overrides, valid, where)

    def build(self, seed: int | None = None, overrides: dict[str, Any] | None = None) -> Any:
        """The task with ``overrides``; with ``instance = "per_seed"`` and a grid ``seed``, that seed's instance."""
        from theory.truth.tasks import check_task, task_class

        options = {**self.options, **(overrides or {})}
        if self.instance == "per_seed" and seed is not None:
            options["seed"] = seed
        try:
            task = task_class(self.name, CONDITIONAL_TASKS)(**options)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"[task] {self.name}: {err}") from err
        return check_task(task, self.name)


def task_label(overrides: dict[str, Any]) -> str:
    """A file-system-safe name of a grid task, e.g. ``d_c=4,d_h=2``; "" for the config's own task."""
    return ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))


def _task_list(value: Any, where: str = "grid.tasks") -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value or not all(isinstance(t, dict) for t in value):
        raise ConfigError("'grid.tasks' must be a non-empty list of tables of task options, e.g. [{d_c = 4}]")
    labels = [task_label(t) for t in value]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"'grid.tasks' lists a task twice: {labels}")
    for i, t in enumerate(value):
        for k, v in t.items():
            if not isinstance(v, (int, float, str, bool)) or any(ch in str(v) for ch in "/\\,="):
                raise ConfigError(f"grid.tasks[{i}].{k} must be a plain number or word, got {v!r}")
    return [dict(t) for t in value]


def _variant_list(value: Any, where: str) -> list[str]:
    """Variants of the grid, each one of VARIANTS, in VARIANTS' order."""
    given = str_list(value, where)
    for i, v in enumerate(given):
        check_choice(f"{where}[{i}]", v, VARIANTS)
    return [v for v in VARIANTS if v in given]


@dataclass
class GridSpec:
    """The sweep's axes; cells are (head, n_s, n_t, seed, variant)."""

    n_s: Annotated[list[int], Reader(int_list, maximum=MAX_PAIRS)]
    n_t: Annotated[list[int], Reader(int_list, minimum=2, maximum=MAX_PAIRS)]
    seeds: Annotated[list[int], Reader(int_list, minimum=0)] = field(default_factory=lambda: [0])
    heads: Annotated[list[str], Reader(str_list)] = field(default_factory=lambda: ["flow"])
    variants: Annotated[list[str], Reader(_variant_list)] = field(default_factory=lambda: ["transfer", "no_transfer"])
    tasks: Annotated[list[dict[str, Any]], Reader(_task_list)] = field(default_factory=lambda: [{}])

    def task_overrides(self, label: str) -> dict[str, Any]:
        """The task options of the grid task named ``label`` (see :func:`task_label`)."""
        for t in self.tasks:
            if task_label(t) == label:
                return t
        raise ConfigError(f"no grid task is labelled {label!r}; have {[task_label(t) for t in self.tasks]}")


@dataclass
class HeadSpec:
    """One head of the grid: its registered ``kind``, constructor ``options`` (features and context_features
    are filled in by the sweep), per-phase training overrides and per-head evaluation overrides."""

    name: str
    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    train: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_eval: int | None = None
    floor_n: int | None = None
    bound_n: int | None = None
    #: the grid variants this head runs (None: all of [grid] variants)
    variants: list[str] | None = None
    #: overrides of [encoder] for this head's encoders (:data:`HEAD_ENCODER_KEYS`)
    encoder: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, name: str, table: dict[str, Any]) -> HeadSpec:
        where = f"heads.{name}"
        check_keys(table, HEAD_KEYS, where)
        kind = table.get("kind", name if name in HEAD_KINDS else None)
        if kind is None:
            raise ConfigError(f"[{where}] needs 'kind' (one of {', '.join(HEAD_KINDS)})")
        kind = check_choice(f"{where}.kind", kind, HEAD_KINDS)
        options = {**DEFAULT_HEAD_OPTIONS[kind], **as_table(table.get("options", {}), f"{where}.options")}
        for key in ("features", "context_features"):
            if key in options:
                raise ConfigError(f"{where}.options.{key} is set by the sweep (d_x and the embedding size)")
        train = as_table(table.get("train", {}), f"{where}.train")
        check_keys(train, PHASES, f"{where}.train")
        spec = cls(
            name=name,
            kind=kind,
            options=options,
            train={p: train_table(t, f"{where}.train.{p}", TRAIN_KEYS) for p, t in train.items()},
            n_eval=None if "n_eval" not in table else integer(table["n_eval"], f"{where}.n_eval", 2, MAX_PAIRS),
            floor_n=None if "floor_n" not in table else integer(table["floor_n"], f"{where}.floor_n", 0, MAX_PAIRS),
            bound_n=None if "bound_n" not in table else integer(table["bound_n"], f"{where}.bound_n", 0, MAX_PAIRS),
            variants=None
            if "variants" not in table
            else [
                check_choice(f"{where}.variants[{i}]", v, VARIANTS)
                for i, v in enumerate(str_list(table["variants"], f"{where}.variants"))
            ],
            encoder=_head_encoder(as_table(table.get("encoder", {}), f"{where}.encoder"), f"{where}.encoder"),
        )
        spec.check_options()
        return spec

    def head_class(self) -> type:
        """The registered Head class of ``kind`` (imports the package that registers it)."""
        from shared_embed.head import HEADS

        if self.kind == "flow":
            import flows  # noqa: F401  (registers "flow")
        elif self.kind == "diffusion":
            try:
                import diffusion.head  # noqa: F401  (registers "diffusion")
            except ImportError as err:
                raise ConfigError(f"head kind 'diffusion' is not available: {err}") from err
        if self.kind not in HEADS:
            raise ConfigError(f"head kind {self.kind!r} is not registered; registered: {sorted(HEADS)}")
        return HEADS[self.kind]

    def check_options(self) -> None:
        """Every option must be a keyword of the head's constructor."""
        params = inspect.signature(self.head_class()).parameters  # the constructor's, without self
        valid = [p for p in params if p not in ("self", "features", "context_features")]
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            check_keys(self.options, valid, f"heads.{self.name}.options")


def _head_encoder(table: dict[str, Any], where: str) -> dict[str, Any]:
    check_keys(table, HEAD_ENCODER_KEYS, where)
    out: dict[str, Any] = {}
    if "hidden" in table:
        out["hidden"] = widths(table["hidden"], f"{where}.hidden", allow_empty=True)
    if "activation" in table:
        out["activation"] = string(table["activation"], f"{where}.activation")
    return out


def _embed_dim(value: Any, where: str) -> int | str:
    """An embedding size, or "d_h": each task's own true embedding dimension."""
    return "d_h" if value == "d_h" else integer(value, where)


@dataclass
class EncoderSpec:
    """The shared encoder h: R^{d_c} -> R^{embed_dim} and the validation fraction of every fit.

    ``embed_dim = "d_h"`` sizes the encoder to each task's true embedding dimension (a study over d_h)."""

    embed_dim: Annotated[int | str, Reader(_embed_dim)] = 2
    hidden: Annotated[list[int], Reader(widths, allow_empty=True)] = field(default_factory=lambda: [64, 64])
    activation: str = "silu"
    val_fraction: Annotated[float, Range(0.0, 0.9)] = 0.2


@dataclass
class EvaluationSpec:
    """Monte Carlo sizes: KL evaluation pairs, the floor head's training pairs (0: no floor), the Girsanov
    bound's pairs (diffusion heads; 0: none), and the samples drawn per context for the plots."""

    n_eval: Annotated[int, Range(2, MAX_PAIRS)] = 20_000
    floor_n: Annotated[int, Range(0, MAX_PAIRS)] = 20_000
    bound_n: Annotated[int, Range(0, MAX_PAIRS)] = 2_000
    sample_n: Annotated[int, Range(0, MAX_PAIRS)] = 300
    sample_contexts: Annotated[int, Range(1)] = 3


@dataclass
class TheorySpec:
    """Predictions and checks: smoothness ``beta``, the rate function and its log-factor power, the confidence
    of the intervals (1 - the report's family-wise error rate), the factor a known answer must be able to
    detect (``margin``) and the equivalence margin of the dimension laws' "flat" claims (``flat_margin``)."""

    beta: float = 2.0
    rate: str = "auto"
    log_power: float = 0.0
    confidence: float = 0.95
    margin: float = 2.0
    flat_margin: float = 1.5

    def __post_init__(self) -> None:
        check_positive_float("theory.beta", self.beta)
        if not 0.5 <= self.confidence < 1.0:
            raise ConfigError(f"'theory.confidence' must be in [0.5, 1), got {self.confidence}")
        for key in ("margin", "flat_margin"):
            if not getattr(self, key) > 1.0:
                raise ConfigError(f"'theory.{key}' must be a factor > 1, got {getattr(self, key)}")
        from theory.truth.rates import check_rate_name

        check_rate_name(self.rate)  # imports nothing: a config read from a run folder never runs code


@dataclass
class RunSpec:
    """Worker processes, torch threads per process, device."""

    workers: Annotated[int, Range(1)] = 1
    threads: Annotated[int, Range(1)] = 1
    device: str = "cpu"

    def __post_init__(self) -> None:
        from shared_embed.device import resolve_device

        resolve_device(self.device)


SECTIONS = ("experiment", "task", "grid", "heads", "encoder", "train", "evaluation", "theory", "run")


@dataclass
class ExperimentConfig:
    """A whole experiment; :meth:`from_dict` validates, :meth:`to_dict` gives the JSON stored with a run."""

    grid: GridSpec
    name: str = "experiment"
    description: str = ""
    control: str = ""
    task: TaskSpec = field(default_factory=TaskSpec)
    heads: dict[str, HeadSpec] = field(default_factory=dict)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    train: dict[str, dict[str, Any]] = field(default_factory=lambda: copy.deepcopy(DEFAULT_TRAIN))
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    theory: TheorySpec = field(default_factory=TheorySpec)
    run: RunSpec = field(default_factory=RunSpec)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ExperimentConfig:
        """Validate a raw (TOML-shaped) dict; raises ConfigError naming the first bad key."""
        raw = apply_preset(as_table(raw, "config"), None)  # a file's [presets] are overlays, not settings
        check_keys(raw, SECTIONS, "")
        if "grid" not in raw:
            raise ConfigError("the config needs a [grid] table with n_s and n_t")
        exp = as_table(raw.get("experiment", {}), "experiment")
        check_keys(exp, ["name", "description", "control", "kind"], "experiment")
        if exp.get("kind", "transfer") != "transfer":
            raise ConfigError(
                f"experiment.kind = {exp['kind']!r} is not a transfer grid: run it with "
                "'gentransfer run', which reads every study kind"
            )
        from theory.verdicts.controls import check_control

        grid = dataclass_from_table(GridSpec, raw["grid"], "grid")
        heads_raw = as_table(raw.get("heads", {}), "heads")
        for name, t in heads_raw.items():  # heads outside the grid: structure only (their package may be absent)
            check_keys(as_table(t, f"heads.{name}"), HEAD_KEYS, f"heads.{name}")
        heads = {}
        for i, name in enumerate(grid.heads):
            if name not in heads_raw and name not in HEAD_KINDS:
                raise ConfigError(
                    f"grid.heads[{i}] = {name!r} has no [heads.{name}] table and is not a head "
                    f"kind ({', '.join(HEAD_KINDS)}); defined heads: {sorted(heads_raw)}"
                )
            heads[name] = HeadSpec.parse(name, heads_raw.get(name, {}))
        task = TaskSpec.parse(as_table(raw.get("task", {}), "task"))
        for i, overrides in enumerate(grid.tasks):
            task.check_overrides(overrides, f"grid.tasks[{i}]")
        train_raw = as_table(raw.get("train", {}), "train")
        check_keys(train_raw, PHASES, "train")
        train = {p: {**DEFAULT_TRAIN[p], **train_table(train_raw.get(p, {}), f"train.{p}", TRAIN_KEYS)} for p in PHASES}
        return cls(
            grid=grid,
            name=string(exp.get("name", "experiment"), "experiment.name"),
            description=string(exp.get("description", ""), "experiment.description"),
            control=check_control(string(exp.get("control", ""), "experiment.control")),
            task=task,
            heads=heads,
            encoder=dataclass_from_table(EncoderSpec, raw.get("encoder", {}), "encoder"),
            train=train,
            evaluation=dataclass_from_table(EvaluationSpec, raw.get("evaluation", {}), "evaluation"),
            theory=dataclass_from_table(TheorySpec, raw.get("theory", {}), "theory"),
            run=dataclass_from_table(RunSpec, raw.get("run", {}), "run"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a TOML-shaped dict (``from_dict(to_dict())`` round-trips)."""
        heads = {}
        for name, h in self.heads.items():
            t: dict[str, Any] = {"kind": h.kind, "options": h.options, "train": h.train}
            for key in ("n_eval", "floor_n", "bound_n", "variants"):
                if getattr(h, key) is not None:
                    t[key] = getattr(h, key)
            if h.encoder:
                t["encoder"] = h.encoder
            heads[name] = t
        return json.loads(
            json.dumps(
                {
                    "experiment": {"name": self.name, "description": self.description, "control": self.control},
                    "task": {"name": self.task.name, "instance": self.task.instance, **self.task.options},
                    "grid": asdict(self.grid),
                    "heads": heads,
                    "encoder": asdict(self.encoder),
                    "train": self.train,
                    "evaluation": asdict(self.evaluation),
                    "theory": asdict(self.theory),
                    "run": asdict(self.run),
                }
            )
        )

    # -- what a cell of a head depends on ---------------------------------------------------------
    def train_config(self, head: str, phase: str, seed: int) -> TrainConfig:
        """The TrainConfig of ``phase`` (source/target/floor) for ``head``: global settings, head overrides,
        the given seed, no progress bar."""
        check_choice("phase", phase, PHASES)
        settings = {**self.train[phase], **self.heads[head].train.get(phase, {})}
        return TrainConfig(**settings, seed=seed, progress=False, description=f"{head}/{phase}")

    def encoder_for(self, head: str) -> dict[str, Any]:
        """The [encoder] settings of ``head``'s encoders: the table, with the head's own overrides."""
        return {**asdict(self.encoder), **self.heads[head].encoder}

    def eval_setting(self, head: str, key: str) -> int:
        """``n_eval``, ``floor_n`` or ``bound_n`` for ``head`` (its override, else [evaluation])."""
        value = getattr(self.heads[head], key)
        return getattr(self.evaluation, key) if value is None else value

    def settings(self, head: str, task: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything a cell of ``head`` (on grid task ``task``) depends on besides its grid coordinates."""
        h = self.heads[head]
        return json.loads(
            json.dumps(
                {
                    "task": {
                        "name": self.task.name,
                        "instance": self.task.instance,
                        **self.task.options,
                        **(task or {}),
                    },
                    "head": {"kind": h.kind, "options": h.options},
                    "encoder": self.encoder_for(head),
                    "train": {p: {**self.train[p], **h.train.get(p, {})} for p in PHASES},
                    "evaluation": {k: self.eval_setting(head, k) for k in ("n_eval", "floor_n", "bound_n")}
                    | {"sample_n": self.evaluation.sample_n, "sample_contexts": self.evaluation.sample_contexts},
                    "device": self.run.device,
                    "control": self.control,
                }
            )
        )

    def study(self) -> dict[str, Any]:
        """What makes two runs one study: the resolved config less what may grow or only shapes the report.

        Left out: the grid axes a resumed run may extend (n_s, n_t, seeds, variants), the name and description,
        [theory] (predictions and checks, recomputed by every report) and the worker and thread counts.
        """
        raw = self.to_dict()
        for key in ("n_s", "n_t", "seeds", "variants"):
            raw["grid"].pop(key)
        raw.pop("theory")
        raw["experiment"] = {"control": self.control}
        raw["run"] = {"device": self.run.device}
        return raw

    def fingerprint(self) -> str:
        """A digest of :meth:`study`: a run folder holds the records of one fingerprint only."""
        return fingerprint(self.study())

    def settings_hash(self, head: str, task: dict[str, Any] | None = None) -> str:
        """A short digest of :meth:`settings`: cells with another digest came from other settings."""
        blob = json.dumps(self.settings(head, task), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# -- loading and overrides -----------------------------------------------------------------------
def load_config(
    path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = (), *, preset: str | None = None
) -> ExperimentConfig:
    """Read a TOML config, merge its ``preset`` overlay (``[presets.NAME]``), apply ``key=value`` overrides in
    order, validate."""
    return ExperimentConfig.from_dict(read_config(path, preset, overrides))


#: Keys of the [experiment] table of a study that is not a transfer grid (TGDP, digits).
STUDY_EXPERIMENT_KEYS = ("kind", "name", "description")


def study_tables(raw: dict[str, Any], vocabulary: Vocabulary, label: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the [experiment] table, the study's settings table with the shared tables folded in) of a cell study's
    config (:class:`theory.engine.vocabulary.Vocabulary`); ConfigError naming a bad key.

    ``label`` names the study in messages (e.g. "TGDP"). Valid top-level tables: experiment, the shared tables the
    study uses (grid, heads, encoder), its own table, run and presets.
    """
    section = vocabulary.section
    shared = sorted({path.split(".")[0] for path, _ in vocabulary.paths})
    valid = ["experiment", *shared, section, "run", PRESETS]
    unknown = sorted(set(raw) - set(valid))
    if unknown:
        raise ConfigError(f"unknown table(s) {unknown} in a {label} config; valid: {', '.join(valid)}")
    exp = as_table(raw.get("experiment", {}), "experiment")
    bad = sorted(set(exp) - set(STUDY_EXPERIMENT_KEYS))
    if bad:
        raise ConfigError(f"unknown key(s) {bad} in [experiment]; valid: {list(STUDY_EXPERIMENT_KEYS)}")
    return exp, vocabulary.fold(raw)


def read_study(raw: dict[str, Any], vocabulary: Vocabulary, cls: type[T], label: str) -> tuple[dict[str, Any], T]:
    """(the [experiment] table, the settings dataclass ``cls``) of a cell study's config: its tables checked
    (:func:`study_tables`), then the one typed reader, with errors in the shared words."""
    exp, table = study_tables(raw, vocabulary, label)
    with vocabulary.shared_names():
        return exp, dataclass_from_table(cls, table, vocabulary.section)


def fingerprint(study: dict[str, Any]) -> str:
    """A short digest of a study's defining settings (what makes two runs one study)."""
    return hashlib.sha256(json.dumps(study, sort_keys=True).encode()).hexdigest()[:16]
