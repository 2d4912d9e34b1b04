"""gentransfer's ground floor: the data contract, the shared encoder, THE training loop, the transfer
workflow, checkpoints and the baseline Gaussian head. Imports nothing from ``flows``, ``diffusion`` or
``theory``.
"""

from .checkpoint import load_checkpoint, save_checkpoint
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
from .linear_gaussian import LinearGaussianHead
from .head import HEADS, Head, build_head, register_head
from .model import ConditionalDistribution, ConditionalModel
from .standardize import Standardizer
from .train import TrainConfig, TrainHistory, evaluate_loss, fit
from .transfer import VARIANTS, FitResult, TransferConfig, fit_source, fit_target_head, fit_variants, train_model

__all__ = [
    "HEADS", "VARIANTS", "BatchedConditional", "CheckpointError", "ConditionalDistribution", "ConditionalModel", "ConfigError",
    "DTypeError", "DataError", "Encoder", "FitResult", "FixedEmbedding", "GaussianHead", "GentransferError",
    "Head", "LinearGaussianHead", "PairedData", "ShapeError", "Standardizer", "TrainConfig", "TrainHistory", "TrainingDivergedError",
    "TransferConfig", "build_head", "evaluate_loss", "fit", "fit_source", "fit_target_head", "fit_variants",
    "load_checkpoint", "register_head", "resolve_device", "save_checkpoint", "train_model",
]
