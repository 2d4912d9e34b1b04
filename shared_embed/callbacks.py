"""Hooks into THE training loop (:func:`shared_embed.train.fit`): at the start, per step, per evaluation, at the end.

Subclass :class:`Callback` and override what you need; pass instances as ``callbacks=[...]`` to ``fit``,
``train_model``, ``fit_source``, ``fit_target_head`` or ``fit_variants``. Under DistributedDataParallel only rank 0
calls them. :class:`TensorBoardCallback` is the shipped example (``pip install 'gentransfer[tensorboard]'``).

Example:
    >>> class PrintEvals(Callback):
    ...     def on_eval(self, step: int, val_loss: float) -> None:
    ...         print(f"step {step}: val {val_loss:.3f}")
    >>> fit(model, loss_fn, train, val, TrainConfig(steps=200), callbacks=[PrintEvals()])
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import DTypeError, GentransferError

if TYPE_CHECKING:
    from .train import TrainHistory

__all__ = ["Callback", "TensorBoardCallback", "check_callbacks"]


class Callback:
    """Does nothing by default; override any of the methods. ``step`` counts optimiser steps done (1 after the
    first step); losses are floats (the global-batch loss under DDP). One callback may serve several fits in a
    row (``fit_variants`` runs a source fit and a target fit per variant): ``on_start`` opens each."""

    def on_start(self, description: str) -> None:
        """Before the first step of a fit, with its ``TrainConfig.description`` (e.g. ``"source"``)."""

    def on_step(self, step: int, loss: float) -> None:
        """After optimiser step ``step``, with that batch's training loss."""

    def on_eval(self, step: int, val_loss: float) -> None:
        """After the evaluation at ``step`` (every ``eval_every`` steps and at the last), with the validation loss."""

    def on_end(self, history: TrainHistory) -> None:
        """Once, when the fit has finished (best weights restored): its history."""


def check_callbacks(callbacks: Iterable[Any] | None) -> tuple[Callback, ...]:
    """``callbacks`` as a tuple; a DTypeError naming the first item without one of :class:`Callback`'s methods."""
    if callbacks is None:
        return ()
    if isinstance(callbacks, Callback) or not isinstance(callbacks, Iterable):
        raise DTypeError(f"callbacks must be a list of Callback objects, got {type(callbacks).__name__}")
    out = tuple(callbacks)
    for i, cb in enumerate(out):
        missing = [m for m in ("on_start", "on_step", "on_eval", "on_end") if not callable(getattr(cb, m, None))]
        if missing:
            raise DTypeError(
                f"callbacks[{i}] ({type(cb).__name__}) lacks {', '.join(missing)}: subclass "
                "shared_embed.callbacks.Callback and override the methods you need"
            )
    return out


def _summary_writer() -> Any:
    """torch's TensorBoard ``SummaryWriter`` class; a GentransferError naming the extra when tensorboard is
    missing."""
    try:
        return importlib.import_module("torch.utils.tensorboard").SummaryWriter
    except ImportError as err:
        raise GentransferError(
            f"TensorBoardCallback needs the package 'tensorboard', which is not installed ({err}): "
            "pip install 'gentransfer[tensorboard]'"
        ) from err


class TensorBoardCallback(Callback):
    """Writes the training loss of every ``every``-th step and every validation loss to TensorBoard event files.

    Scalars ``{fit}/train_loss`` and ``{fit}/val_loss`` against the step, where ``{fit}`` is the fit's
    description (``source``, ``target``, ...); a description seen before gets a count (``target (2)``), so the
    fits of ``fit_variants`` keep one curve each, in the order they ran. Files are flushed at the end of every
    fit; call :meth:`close` when done. View with ``tensorboard --logdir LOG_DIR``.

    Args:
        log_dir: folder of the event files (created).
        every: write the training loss every ``every`` steps (validation losses are always written).

    Raises:
        GentransferError: tensorboard is not installed (``pip install 'gentransfer[tensorboard]'``).
    """

    def __init__(self, log_dir: str | Path, every: int = 1) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise DTypeError(f"every must be an int >= 1, got {every!r}")
        self.log_dir = Path(log_dir)
        self.every = every
        self.writer = _summary_writer()(log_dir=str(self.log_dir))
        self.fits: list[str] = []  # the tag of every fit started, in order
        self.tag = "fit"

    def on_start(self, description: str) -> None:
        name = description or "fit"
        seen = sum(1 for f in self.fits if f == name or f.startswith(f"{name} ("))
        self.tag = name if not seen else f"{name} ({seen + 1})"
        self.fits.append(self.tag)

    def on_step(self, step: int, loss: float) -> None:
        if step % self.every == 0:
            self.writer.add_scalar(f"{self.tag}/train_loss", loss, step)

    def on_eval(self, step: int, val_loss: float) -> None:
        self.writer.add_scalar(f"{self.tag}/val_loss", val_loss, step)

    def on_end(self, history: TrainHistory) -> None:
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self.writer.close()
