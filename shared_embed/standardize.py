"""Affine standardisation kept as buffers, so its statistics travel with every checkpoint."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .validation import check_matrix, check_positive_int

__all__ = ["Standardizer"]


class Standardizer(nn.Module):
    """``z = (x - mean) / std`` per feature, with ``log|det dz/dx| = -sum(log std)``.

    Spline flows leave inputs outside [-5, 5] untransformed, so every head sees standardised data.
    """

    mean: Tensor  # buffer (features,)
    std: Tensor  # buffer (features,)

    def __init__(self, features: int) -> None:
        super().__init__()
        check_positive_int("features", features)
        self.features = features
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    @classmethod
    def fit(cls, data: Tensor, min_std: float = 1e-6) -> Standardizer:
        """Statistics of ``data`` (n, features); a single row keeps unit scale."""
        check_matrix("data", data)
        s = cls(data.shape[1]).to(data.device, data.dtype)
        s.mean.copy_(data.mean(0))
        if data.shape[0] > 1:
            s.std.copy_(data.std(0).clamp_min(min_std))
        return s

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        return z * self.std + self.mean

    def log_abs_det(self) -> Tensor:
        """log |det dz/dx|, a scalar (the same for every row)."""
        return -self.std.log().sum()
