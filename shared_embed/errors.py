"""The documented exception types of gentransfer.

Every public entry point raises one of these for bad input, with a message that names the argument,
what was expected and what came. All derive from :class:`GentransferError`, and each also derives from
the built-in type a user would catch anyway (``ValueError``, ``TypeError``, ``RuntimeError``).
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DTypeError",
    "DataError",
    "FolderBusyError",
    "GentransferError",
    "GuidanceWarning",
    "PremiseWarning",
    "ShapeError",
    "TrainingDivergedError",
]


class GentransferError(Exception):
    """Base class of every error gentransfer raises on purpose."""


class ShapeError(GentransferError, ValueError):
    """A tensor has the wrong rank or size (e.g. ``x`` should be (n, 2) and is (n, 3))."""


class DataError(GentransferError, ValueError):
    """Values are unusable: NaN/inf, empty or too-small data sets, negative sizes, out-of-range numbers."""


class DTypeError(GentransferError, TypeError):
    """A tensor or argument has the wrong type or dtype (e.g. an integer tensor where floats are needed)."""


class ConfigError(GentransferError, ValueError):
    """An unknown name (backend, transform, variant, ...) or an inconsistent configuration."""


class CheckpointError(GentransferError, ValueError):
    """A checkpoint is missing, truncated, corrupted, of a newer format, or from a different configuration."""


class TrainingDivergedError(GentransferError, RuntimeError):
    """Training produced a NaN/inf loss or gradient; the message names the step and the last good checkpoint."""


class FolderBusyError(GentransferError, RuntimeError):
    """A run folder is locked by another run (the message names the holder's pid and host)."""


class PremiseWarning(UserWarning):
    """A method's premise fails on the data given (e.g. TGDP's target outside the source's support); the message
    names each failed check, its value and its threshold. A warning, not an error: the fit still runs."""


class GuidanceWarning(UserWarning):
    """A guidance was found unusable before it was used (e.g. TGDP's grad log h_t far larger than the source
    score on many probed rows) and was refused: the message names the check, its value and its limit."""
