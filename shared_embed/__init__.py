"""gentransfer's ground floor: the data contract, the shared encoder, THE training loop, the transfer
workflow, checkpoints and the baseline Gaussian head. Imports nothing from ``flows``, ``diffusion`` or
``theory``.

The names below load on first use (PEP 562), so ``import shared_embed.errors`` (the command line's error
types) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .callbacks import Callback, TensorBoardCallback
    from .checkpoint import load_checkpoint, save_checkpoint
    from .convert import as_paired_data
    from .data import PairedData
    from .device import resolve_device
    from .distribution import BatchedConditional
    from .encoder import Encoder, FixedEmbedding
    from .errors import (
        CheckpointError,
        ConfigError,
        DataError,
        DTypeError,
        GentransferError,
        ShapeError,
        TrainingDivergedError,
    )
    from .gaussian import GaussianHead
    from .head import HEADS, Head, build_head, register_head
    from .linear_gaussian import LinearGaussianHead
    from .model import ConditionalDistribution, ConditionalModel
    from .standardize import Standardizer
    from .train import TrainConfig, TrainHistory, evaluate_loss, fit
    from .transfer import VARIANTS, FitResult, TransferConfig, fit_source, fit_target_head, fit_variants, train_model

#: Public name -> the submodule that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("Callback", "TensorBoardCallback"), "callbacks"),
    **dict.fromkeys(("load_checkpoint", "save_checkpoint"), "checkpoint"),
    "as_paired_data": "convert",
    "PairedData": "data",
    "resolve_device": "device",
    "BatchedConditional": "distribution",
    **dict.fromkeys(("Encoder", "FixedEmbedding"), "encoder"),
    **dict.fromkeys(
        (
            "CheckpointError",
            "ConfigError",
            "DataError",
            "DTypeError",
            "GentransferError",
            "ShapeError",
            "TrainingDivergedError",
        ),
        "errors",
    ),
    "GaussianHead": "gaussian",
    "LinearGaussianHead": "linear_gaussian",
    **dict.fromkeys(("HEADS", "Head", "build_head", "register_head"), "head"),
    **dict.fromkeys(("ConditionalDistribution", "ConditionalModel"), "model"),
    "Standardizer": "standardize",
    **dict.fromkeys(("TrainConfig", "TrainHistory", "evaluate_loss", "fit"), "train"),
    **dict.fromkeys(
        ("VARIANTS", "FitResult", "TransferConfig", "fit_source", "fit_target_head", "fit_variants", "train_model"),
        "transfer",
    ),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the submodule that defines ``name`` on first access (AttributeError for any other name)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
