"""Choosing a device: ``cpu``, ``cuda`` (``cuda:N``), ``mps`` or ``auto`` (the best available, CPU otherwise)."""

from __future__ import annotations

import torch

from .errors import ConfigError

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device = "cpu") -> torch.device:
    """Turn a device name into a ``torch.device``, refusing one this machine lacks with a clear error.

    Example:
        >>> resolve_device("auto")  # cuda if available, then mps, else cpu
        device(type='cpu')
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ConfigError(f"device must be a string like 'cpu', 'cuda', 'cuda:0', 'mps' or 'auto', got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"unknown device {name!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} was asked for but CUDA is not available here; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} was asked for but MPS is not available here; use 'cpu' or 'auto'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device type {device.type!r}; use 'cpu', 'cuda', 'mps' or 'auto'")
    return device
