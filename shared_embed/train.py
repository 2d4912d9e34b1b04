"""THE training loop: one loop for every head, classifier and guidance network in gentransfer.

It minimises ``loss_fn(batch)`` over batches of a tuple of tensors and knows nothing of flows, scores or KL.
Features: Adam/AdamW, warm-up + cosine/linear/constant learning rate, gradient clipping, early stopping on a
validation loss (on by default: ``patience`` evaluations without a new best; best weights restored), seeding that
leaves the caller's global RNG as it was, a tqdm bar (on a terminal or in a notebook; ``GENTRANSFER_QUIET=1``
silences it), per-step and per-evaluation callbacks (:mod:`shared_embed.callbacks`, e.g. TensorBoard), a clear
error on a NaN/inf loss or gradient, periodic checkpoints with exact resume, and DistributedDataParallel when
``torch.distributed`` is initialised (launch with ``torchrun``).

Example:
    >>> model = nn.Linear(3, 1)
    >>> x, y = torch.randn(256, 3), torch.randn(256, 1)
    >>> history = fit(model, lambda b: (model(b[0]) - b[1]).square().mean(), (x, y), config=TrainConfig(steps=50))
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .callbacks import Callback, check_callbacks
from .checkpoint import load_checkpoint, save_checkpoint
from .data import check_same_rows, iterate_batches
from .errors import CheckpointError, ConfigError, TrainingDivergedError
from .progress import progress_bar, watched
from .rng import isolated_global_rng
from .state import flatten_training_state, unflatten_training_state
from .validation import check_choice, check_positive_float, check_positive_int

__all__ = [
    "DEFAULT_PATIENCE",
    "OPTIMIZERS",
    "SCHEDULES",
    "LossFn",
    "TrainConfig",
    "TrainHistory",
    "evaluate_loss",
    "fit",
]

LossFn = Callable[[Sequence[Tensor]], Tensor]
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
SCHEDULES = ("constant", "cosine", "linear")
#: evaluations without a new best validation loss before a fit stops (with ``eval_every = 100``: 500 steps)
DEFAULT_PATIENCE = 5


@dataclass
class TrainConfig:
    """Settings of :func:`fit`. ``steps`` counts optimiser steps; ``batch_size`` is the global batch.

    Early stopping is on by default: with validation data, a fit stops after ``patience`` evaluations (one every
    ``eval_every`` steps) without a new best validation loss (:data:`DEFAULT_PATIENCE` = 5), and the best
    weights are restored (``restore_best``). ``patience=None`` or ``0`` turns it off: every step runs.

    ``epochs`` (None: off) states the budget in passes over the training rows instead: the fit runs
    ``min(steps, epochs * batches per epoch)`` steps (a batch per ``batch_size`` rows, the last partial one
    kept), and the learning-rate schedule spans those steps. A budget in epochs scales with the data: one
    setting trains 50 rows (one batch an epoch at ``batch_size = 128``) and 500 rows (four) for the same
    number of passes, where a step count would train the larger set four times less.
    """

    steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_steps: int = 0
    grad_clip: float | None = 5.0
    eval_every: int = 100
    patience: int | None = DEFAULT_PATIENCE
    restore_best: bool = True
    seed: int = 0
    progress: bool | None = None
    description: str = "train"
    checkpoint_path: str | None = None
    checkpoint_every: int = 0
    resume: bool = True
    epochs: int | None = None

    def __post_init__(self) -> None:
        check_positive_int("steps", self.steps)
        if self.epochs is not None:
            check_positive_int("epochs", self.epochs)
        check_positive_int("batch_size", self.batch_size)
        check_positive_float("lr", self.lr)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_positive_float("weight_decay", self.weight_decay, allow_zero=True)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_positive_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.grad_clip is not None:
            check_positive_float("grad_clip", self.grad_clip)
        check_positive_int("eval_every", self.eval_every)
        if self.patience is not None:
            check_positive_int("patience", self.patience, minimum=0)
        check_positive_int("checkpoint_every", self.checkpoint_every, minimum=0)
        if self.checkpoint_every and not self.checkpoint_path:
            raise ConfigError("checkpoint_every > 0 needs a checkpoint_path")

    def for_rows(self, n_train: int, world: int = 1) -> TrainConfig:
        """This config with ``steps`` the budget :func:`fit` runs on ``n_train`` rows over ``world`` processes:
        ``min(steps, epochs * batches per epoch)`` with ``epochs``, else ``steps`` unchanged (``epochs`` None)."""
        if self.epochs is None:
            return self
        local_rows = math.ceil(check_positive_int("n_train", n_train) / world)
        per_epoch = math.ceil(local_rows / (self.batch_size // world))
        return self.replace(steps=min(self.steps, self.epochs * per_epoch), epochs=None)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        known = {f.name for f in fields(self)}
        unknown = set(changes) - known
        if unknown:
            raise ConfigError(f"unknown TrainConfig field(s) {sorted(unknown)}; valid: {sorted(known)}")
        return TrainConfig(**{**asdict(self), **changes})


@dataclass
class TrainHistory:
    """What happened: train loss per step, validation loss per evaluation, where the best weights came from, and
    how many rows trained (``n_train``) and how many were held out for validation (``n_val``, 0: none)."""

    train_loss: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_step: int = 0
    best_val: float = math.inf
    steps_done: int = 0
    stopped_early: bool = False
    resumed_from: int | None = None
    seconds: float = 0.0
    initial_val: float | None = None
    #: what is doubtful about the fit (e.g. it never beat its initial model), one sentence each
    warnings: list[str] = field(default_factory=list)
    n_train: int = 0
    n_val: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: steps run (and why it stopped), the best validation loss, rows trained and held out."""
        stop = " (stopped early: no gain)" if self.stopped_early else ""
        val = f", best val {self.best_val:.4g} at step {self.best_step}" if self.n_val else ""
        rows = f"{self.n_train} rows trained, {self.n_val} held out for validation"
        return f"{self.steps_done} steps{stop}{val}; {rows}"

    @property
    def improved(self) -> bool:
        """False when no evaluation of the trained model beat the initial one (``initial_val``, step 0): the
        fit made the model worse, e.g. a far too large learning rate or too few pairs to learn from."""
        return self.initial_val is None or self.best_val < self.initial_val


class _LossModule(nn.Module):
    """Holds the trained module so DDP can wrap it; ``forward(*batch)`` is the loss."""

    def __init__(self, module: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.module = module
        self.loss_fn = loss_fn

    def forward(self, *batch: Tensor) -> Tensor:
        return self.loss_fn(batch)


def _lr_factor(config: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        span = max(config.steps - config.warmup_steps, 1)
        progress = min((step - config.warmup_steps) / span, 1.0)
        if config.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def _check_finite_weights(params: list[nn.Parameter], config: TrainConfig, state: _LoopState) -> None:
    """TrainingDivergedError when a weight is NaN or inf: unclipped steps skip the per-step gradient check (a
    non-finite gradient shows in the next step's loss), so this runs before every checkpoint and at the end."""
    if not all(bool(torch.isfinite(p).all()) for p in params):
        raise TrainingDivergedError(
            f"{config.description}: a weight is NaN or inf after step {state.step} (a non-finite gradient); last "
            f"good checkpoint: {state.last_ckpt}. Lower the learning rate (lr={config.lr}) or set grad_clip."
        )


def _show_progress(config: TrainConfig, rank: int) -> bool:
    return rank == 0 and watched(config.progress)


@torch.no_grad()
def evaluate_loss(loss_fn: LossFn, data: Sequence[Tensor], batch_size: int = 4096, seed: int = 12345) -> float:
    """Mean of ``loss_fn`` over ``data`` in chunks, weighted by chunk size, under a fixed RNG seed.

    The seed makes stochastic losses (denoising score matching) comparable across evaluations, and the
    caller's RNG stream is left untouched.
    """
    n = check_same_rows(data, "val_data")
    total = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, batch_size):
            chunk = tuple(t[start : start + batch_size] for t in data)
            total += float(loss_fn(chunk)) * chunk[0].shape[0]
    return total / n


@dataclass
class _LoopState:
    """Where the loop stands: everything a checkpoint must hold to resume bit for bit."""

    epoch_gen_state: Tensor  # the batch generator's state at the start of the current epoch
    history: TrainHistory = field(default_factory=TrainHistory)
    step: int = 0
    epoch_batch: int = 0
    best_state: dict[str, Tensor] | None = None
    evals_without_gain: int = 0
    last_ckpt: str = "none"


def _world() -> tuple[bool, int, int]:
    """(distributed, rank, world size): DDP is on when ``torch.distributed`` is initialised."""
    distributed = dist.is_available() and dist.is_initialized()
    return (distributed, dist.get_rank(), dist.get_world_size()) if distributed else (False, 0, 1)


def _global_loss(loss: Tensor, world: int) -> float:
    """The global-batch loss, as one process would see it (an all-reduce over the ranks)."""
    logged = loss.detach().clone()
    dist.all_reduce(logged)
    return float(logged / world)


def _rank_batches(
    train_data: tuple[Tensor, ...],
    n: int,
    local_batch: int,
    batch_gen: torch.Generator,
    rank: int,
    world: int,
    distributed: bool,
) -> Any:
    """One epoch's batches of this rank: every rank draws the same permutation of the whole set, then keeps
    its own interleaved share."""
    perm = torch.randperm(n, generator=batch_gen)
    indices = perm[rank::world] if distributed else perm
    return iterate_batches(train_data, local_batch, batch_gen, shuffle=False, indices=indices)


class _Checkpointer:
    """Periodic training-state checkpoints (rank 0 writes) and exact resume from them."""

    def __init__(
        self,
        config: TrainConfig,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rank: int,
    ) -> None:
        self.config, self.module, self.optimizer, self.scheduler, self.rank = config, module, optimizer, scheduler, rank
        self.path = Path(config.checkpoint_path) if config.checkpoint_path else None

    def resume(self, state: _LoopState) -> None:
        """Load the checkpoint into the module, optimiser, scheduler, RNG and ``state`` when there is one."""
        ckpt, config = self.path, self.config
        if ckpt is None or not config.resume or not ckpt.is_file():
            return
        tensors, _, extra = load_checkpoint(ckpt)
        if extra.get("config", {}).get("seed") != config.seed:
            raise CheckpointError(f"{ckpt} was written by a run with another seed; remove it or set resume=False")
        saved = unflatten_training_state(tensors, extra)
        self.module.load_state_dict(saved["module"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["torch_rng"])
        state.epoch_gen_state = saved["epoch_gen_state"]
        state.best_state = saved.get("best_state")
        state.step, state.epoch_batch = extra["step"], extra["epoch_batch"]
        state.history = TrainHistory(**extra["history"])
        state.history.resumed_from = state.step
        state.evals_without_gain = extra["evals_without_gain"]
        state.last_ckpt = str(ckpt)

    def save(self, state: _LoopState) -> None:
        if self.path is None or self.rank != 0:
            return
        tensors, extra = flatten_training_state(
            module=self.module.state_dict(),
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            torch_rng=torch.get_rng_state(),
            epoch_gen_state=state.epoch_gen_state,
            best_state=state.best_state,
        )
        extra.update(
            step=state.step,
            epoch_batch=state.epoch_batch,
            history=state.history.to_dict(),
            evals_without_gain=state.evals_without_gain,
            config=asdict(self.config),
        )
        save_checkpoint(
            self.path, tensors, {"kind": "training_state", "description": self.config.description}, extra=extra
        )
        state.last_ckpt = str(self.path)


def _validate(
    module: nn.Module,
    loss_fn: LossFn,
    val_data: Sequence[Tensor],
    config: TrainConfig,
    state: _LoopState,
    bar: Any,
    callbacks: Sequence[Callback],
) -> None:
    """Evaluate the validation loss; keep the best weights; count evaluations without gain (early stopping)."""
    history = state.history
    module.eval()
    val = evaluate_loss(loss_fn, val_data)
    module.train()
    history.val_steps.append(state.step)
    history.val_loss.append(val)
    bar.set_postfix(loss=f"{history.train_loss[-1]:.4g}", val=f"{val:.4g}", rows=_rows(history))
    for callback in callbacks:
        callback.on_eval(state.step, val)
    if val < history.best_val:
        history.best_val, history.best_step, state.evals_without_gain = val, state.step, 0
        state.best_state = copy.deepcopy(module.state_dict())
    else:
        state.evals_without_gain += 1
        if config.patience and state.evals_without_gain >= config.patience:
            history.stopped_early = True


def _rows(history: TrainHistory) -> str:
    """``"train/val"`` row counts for the progress bar, e.g. ``"32/8"``."""
    return f"{history.n_train}/{history.n_val}"


def _step(
    runner: nn.Module,
    batch: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    params: list[nn.Parameter],
    config: TrainConfig,
    state: _LoopState,
) -> tuple[Tensor, float]:
    """One optimiser step on ``batch``: (the loss, its value); TrainingDivergedError on a NaN/inf loss, or on a
    NaN/inf gradient norm when clipping (unclipped, a non-finite gradient shows in the next loss, and
    :func:`_check_finite_weights` guards checkpoints and the end)."""
    loss = runner(*batch)
    loss_value = float(loss.detach())  # one host sync per step: checked here, logged by the caller
    if not math.isfinite(loss_value):
        raise TrainingDivergedError(
            f"{config.description}: loss is {loss_value} at step {state.step}; last good checkpoint: "
            f"{state.last_ckpt}. Lower the learning rate (lr={config.lr}) or check the data."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if config.grad_clip is not None:  # clipping computes the norm anyway: a non-finite one stops here
        norm = float(torch.nn.utils.clip_grad_norm_(params, config.grad_clip))
        if not math.isfinite(norm):
            raise TrainingDivergedError(
                f"{config.description}: gradient norm is {norm} at step {state.step}; last good "
                f"checkpoint: {state.last_ckpt}. Lower the learning rate (lr={config.lr})."
            )
    optimizer.step()
    scheduler.step()
    return loss, loss_value


def _check_inputs(
    module: nn.Module, train_data: Sequence[Tensor], val_data: Sequence[Tensor] | None, world: int, config: TrainConfig
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None, int, list[nn.Parameter]]:
    """(train data, val data, rows, trainable parameters), each checked."""
    train_data = tuple(train_data)
    n = check_same_rows(train_data, "train_data")
    if val_data is not None:
        val_data = tuple(val_data)
        check_same_rows(val_data, "val_data")
    params = [p for p in module.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("module has no trainable parameters (all have requires_grad=False)")
    if config.batch_size % world:
        raise ConfigError(f"batch_size ({config.batch_size}) must be divisible by the world size ({world})")
    return train_data, val_data, n, params


def fit(
    module: nn.Module,
    loss_fn: LossFn,
    train_data: Sequence[Tensor],
    val_data: Sequence[Tensor] | None = None,
    config: TrainConfig | None = None,
    *,
    callbacks: Sequence[Callback] = (),
) -> TrainHistory:
    """Minimise ``loss_fn(batch)`` over the trainable parameters of ``module``.

    Args:
        module: owns every trained parameter (those with ``requires_grad``); its state is checkpointed and,
            with a validation set, restored to the best evaluation at the end.
        loss_fn: maps a batch, a tuple of tensors sliced from ``train_data`` along dim 0, to a scalar.
        train_data: tensors sharing their first dimension, e.g. ``(c, x)``.
        val_data: the same layout; enables early stopping (``patience``) and best-weight restoring. The
            initial model is evaluated too (``history.initial_val``): ``history.improved`` is False when no
            trained evaluation beat it.
        config: :class:`TrainConfig`.
        callbacks: :class:`~shared_embed.callbacks.Callback` objects: ``on_start(description)`` first,
            ``on_step(step, loss)`` after each optimiser step, ``on_eval(step, val_loss)`` after each evaluation,
            ``on_end(history)`` once at the end (rank 0 only under DDP), e.g.
            :class:`~shared_embed.callbacks.TensorBoardCallback`.

    Randomness: the batches come from a ``torch.Generator`` seeded with ``config.seed``; draws inside
    ``loss_fn`` (noise, dropout) read torch's global RNG, which the fit seeds with ``config.seed`` on a fork
    (``torch.random.fork_rng``, CPU and the module's device) and gives back as it found it. A seeded fit is thus
    reproducible whatever the caller drew before, and the caller's global RNG state is untouched by it.

    Every submodule of ``module`` with a method ``after_optimizer_step()`` has it called after each optimiser
    step (a diffusion head's EMA of its weights updates there).

    Raises:
        TrainingDivergedError: a NaN/inf loss or gradient; the message names the step and last checkpoint.
        ShapeError, DataError: tensors that do not share their first dimension. ConfigError: no trainable
            parameter, or a batch size the process count does not divide.

    Example:
        >>> model = nn.Linear(3, 1)
        >>> x, y = torch.randn(256, 3), torch.randn(256, 1)
        >>> history = fit(model, lambda b: (model(b[0]) - b[1]).square().mean(), (x, y), (x[:64], y[:64]),
        ...               TrainConfig(steps=200, patience=5))
        >>> history.best_step <= history.steps_done
        True
    """
    config = config or TrainConfig()
    callbacks = check_callbacks(callbacks)
    distributed, rank, world = _world()
    train_data, val_data, n, params = _check_inputs(module, train_data, val_data, world, config)
    config = config.for_rows(n, world)  # a budget in epochs becomes this data's step count
    with isolated_global_rng(config.seed, params[0].device):
        return _train(module, loss_fn, train_data, val_data, n, params, config, callbacks if rank == 0 else ())


def _train(
    module: nn.Module,
    loss_fn: LossFn,
    train_data: tuple[Tensor, ...],
    val_data: tuple[Tensor, ...] | None,
    n: int,
    params: list[nn.Parameter],
    config: TrainConfig,
    callbacks: Sequence[Callback],
) -> TrainHistory:
    """:func:`fit`'s loop, with its inputs checked and torch's global RNG seeded (on a fork)."""
    distributed, rank, world = _world()
    batch_gen = torch.Generator().manual_seed(config.seed)
    runner: nn.Module = _LossModule(module, loss_fn)
    if distributed:
        runner = nn.parallel.DistributedDataParallel(runner)
    optimizer = OPTIMIZERS[config.optimizer](params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    state = _LoopState(epoch_gen_state=batch_gen.get_state())
    checkpoints = _Checkpointer(config, module, optimizer, scheduler, rank)
    checkpoints.resume(state)

    start_time = time.perf_counter()
    bar = progress_bar(
        enabled=_show_progress(config, rank),
        total=config.steps,
        initial=state.step,
        desc=config.description,
        leave=False,
        dynamic_ncols=True,
    )
    # modules that keep running averages of their weights (a diffusion head's EMA) update after every step
    step_hooks = [
        cast(Callable[[], None], m.after_optimizer_step)
        for m in module.modules()
        if callable(getattr(m, "after_optimizer_step", None))
    ]
    module.train()
    history = state.history
    history.n_train, history.n_val = n, 0 if val_data is None else val_data[0].shape[0]
    bar.set_postfix(rows=_rows(history))
    for callback in callbacks:
        callback.on_start(config.description)
    if val_data is not None and state.step == 0:  # a reference only: the restore picks among trained weights
        module.eval()
        history.initial_val = evaluate_loss(loss_fn, val_data)  # under its own RNG seed: training unchanged
        module.train()
    try:
        while state.step < config.steps and not history.stopped_early:
            batch_gen.set_state(state.epoch_gen_state)
            for i, batch in enumerate(
                _rank_batches(train_data, n, config.batch_size // world, batch_gen, rank, world, distributed)
            ):
                if i < state.epoch_batch:
                    continue  # resuming mid-epoch: skip what was already seen
                loss, loss_value = _step(runner, batch, optimizer, scheduler, params, config, state)
                for hook in step_hooks:
                    hook()
                state.step += 1
                state.epoch_batch = i + 1
                history.train_loss.append(_global_loss(loss, world) if distributed else loss_value)
                bar.update(1)
                for callback in callbacks:
                    callback.on_step(state.step, history.train_loss[-1])
                if val_data is not None and (state.step % config.eval_every == 0 or state.step == config.steps):
                    _validate(module, loss_fn, val_data, config, state, bar, callbacks)
                if config.checkpoint_every and state.step % config.checkpoint_every == 0:
                    _check_finite_weights(params, config, state)
                    checkpoints.save(state)
                if state.step >= config.steps or history.stopped_early:
                    break
            else:
                state.epoch_batch = 0
                state.epoch_gen_state = batch_gen.get_state()
    finally:
        bar.close()
    _check_finite_weights(params, config, state)
    history = _finish(module, config, val_data, state, checkpoints, time.perf_counter() - start_time)
    for callback in callbacks:
        callback.on_end(history)
    return history


def _finish(
    module: nn.Module,
    config: TrainConfig,
    val_data: Sequence[Tensor] | None,
    state: _LoopState,
    checkpoints: _Checkpointer,
    seconds: float,
) -> TrainHistory:
    """Close the history, restore the best weights (with validation data), write the final checkpoint."""
    history = state.history
    history.steps_done = state.step
    history.seconds += seconds
    if val_data is None:
        history.best_step = state.step
    elif config.restore_best and state.best_state is not None:
        module.load_state_dict(state.best_state)
    module.eval()
    if not history.improved and not history.warnings:
        _warn(
            history,
            f"{config.description or 'the'} fit never beat its initial model on the validation rows "
            f"(best loss {history.best_val:.4g} vs {history.initial_val:.4g} at step 0): lower lr "
            f"(now {config.lr:g}) or give more rows",
        )
    if config.checkpoint_every:
        checkpoints.save(state)
    return history


def _warn(history: TrainHistory, message: str) -> None:
    """Record ``message`` on ``history``: kept with it (checkpoints too) and listed in a fit's summary."""
    history.warnings.append(message)
