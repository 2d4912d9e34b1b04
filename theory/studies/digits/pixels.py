"""Dequantisation and the logit transform of discrete pixel intensities, with their exact Jacobian.

The convention of the flow literature (RealNVP, Dinh et al. 2017, section 4.1; MAF, Papamakarios et al.
2017), for images with ``levels`` integer intensities v in {0, ..., levels - 1}:

1. dequantise: y = v + u, u ~ U[0, 1)^D, so y lies in [0, levels)^D ("pixel space");
2. scale: s = y / levels in [0, 1);
3. logit: p = alpha + (1 - 2 alpha) s, z = log p - log(1 - p) (alpha = 0.05 as in RealNVP).

Models are fitted in z-space. Likelihoods are reported in the dequantised pixel space y:

    log p_y(y) = log p_z(z) + sum_i log |dz_i / dy_i|,
    dz_i / dy_i = (1 - 2 alpha) / (levels * p_i * (1 - p_i)),

and bits per dimension = -log p_y(y) / (D ln 2). Because p_y is a density on [0, levels)^D with unit-width
bins, E_u[-log p_y(v + u)] >= -log P(v) for the discrete model P(v) = int_{[0,1)^D} p_y(v + u) du, so the
reported bits/dim upper-bound the discrete code length (the convention of RealNVP, MAF and Glow, whose
256-level numbers are in this same space). A model uniform on [0, levels)^D scores log2(levels) bits/dim
exactly (4.087 for 17 levels).

Example:
    >>> px = LogitPixels(levels=17, alpha=0.05)
    >>> v = torch.randint(0, 17, (4, 64))
    >>> y = px.dequantize(v, torch.Generator().manual_seed(0))
    >>> z, log_det = px.to_logit(y)          # log_det: (4,) = sum log|dz/dy|
    >>> torch.allclose(px.from_logit(z), y)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from shared_embed.errors import DataError, DTypeError
from shared_embed.validation import check_fraction, check_positive_int, check_tensor


@dataclass(frozen=True)
class LogitPixels:
    """The map between integer pixel levels, dequantised pixel space y and logit space z (module docstring)."""

    levels: int = 17
    alpha: float = 0.05

    def __post_init__(self) -> None:
        check_positive_int("levels", self.levels, minimum=2)
        check_fraction("alpha", self.alpha, low=0.0, high=0.5)

    @property
    def z_bounds(self) -> tuple[float, float]:
        """The interval of z that pixel space [0, levels) maps onto: (logit(alpha), logit(1 - alpha))."""
        lo = math.log(self.alpha) - math.log1p(-self.alpha)
        return lo, -lo

    def check_levels(self, name: str, v: Tensor) -> Tensor:
        """Check integer levels (any integer dtype, or floats holding integers) in [0, levels)."""
        if not isinstance(v, Tensor):
            raise DTypeError(f"{name} must be a torch.Tensor of pixel levels, got {type(v).__name__}")
        if v.is_floating_point():
            check_tensor(name, v)
            if bool((v != v.round()).any()):
                raise DataError(f"{name} must hold integer pixel levels 0..{self.levels - 1}, got fractional values")
        elif v.dtype == torch.bool or v.is_complex():
            raise DTypeError(f"{name} must hold integer pixel levels, got dtype {v.dtype}")
        if v.numel() and (int(v.min()) < 0 or int(v.max()) >= self.levels):
            raise DataError(
                f"{name} must hold pixel levels in 0..{self.levels - 1}, got range [{int(v.min())}, {int(v.max())}]"
            )
        return v

    def dequantize(
        self,
        v: Tensor,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        margin: float = 0.0,
    ) -> Tensor:
        """y = v + u with u ~ U[margin, 1 - margin) i.i.d. (margin 0: the standard U[0, 1)); shape of ``v``.

        A small margin (e.g. 1e-4) keeps y away from the bin edges, so that :meth:`redequantize` recovers
        the levels exactly from float32 logits; the density it implies differs from U[0, 1) by 1/(1 - 2 margin).
        """
        v = self.check_levels("v", v)
        if not 0.0 <= margin < 0.5:
            raise DataError(f"margin must lie in [0, 0.5), got {margin}")
        u = margin + (1.0 - 2.0 * margin) * torch.rand(v.shape, generator=generator, dtype=dtype)
        return v.to(dtype) + u.to(v.device)

    def redequantize(self, z: Tensor) -> Tensor:
        """Fresh dequantisation noise for logits z (n, D): logit(floor(y(z)) + u), u ~ U[0, 1) (global RNG).

        The training-batch ``augment`` of :mod:`shared_embed.transfer`: each pass over the data sees new
        noise (the flow literature's practice), so a model cannot fit one fixed draw. z must come from
        :meth:`dequantize` with a margin (bin recovery is then exact).
        """
        levels = self.quantize(self.from_logit(z))
        y = levels.to(z.dtype) + torch.rand(z.shape, dtype=z.dtype, device=z.device)
        return self.to_logit(y)[0]

    def _p(self, y: Tensor) -> Tensor:
        return self.alpha + (1.0 - 2.0 * self.alpha) * (y / self.levels)

    def to_logit(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """z (n, D) from dequantised pixels y (n, D) in [0, levels], and log|det dz/dy| (n,)."""
        check_tensor("y", y, ndim=2, min_rows=1)
        if bool((y < 0).any() or (y > self.levels).any()):
            raise DataError(
                f"y must lie in [0, {self.levels}] (dequantised pixel space), "
                f"got range [{float(y.min()):.4g}, {float(y.max()):.4g}]"
            )
        p = self._p(y)
        z = torch.log(p) - torch.log1p(-p)
        return z, self.log_abs_det_dz_dy(y)

    def log_abs_det_dz_dy(self, y: Tensor) -> Tensor:
        """sum_i log|dz_i/dy_i| (n,) at pixels y (n, D): log(1 - 2 alpha) - log levels - log p - log(1 - p)."""
        p = self._p(y)
        per_dim = math.log(1.0 - 2.0 * self.alpha) - math.log(self.levels) - torch.log(p) - torch.log1p(-p)
        return per_dim.sum(-1)

    def from_logit(self, z: Tensor) -> Tensor:
        """The inverse map y (n, D) of logits z (n, D); y leaves [0, levels) when z leaves :attr:`z_bounds`."""
        check_tensor("z", z, ndim=2, min_rows=1)
        return (torch.sigmoid(z) - self.alpha) / (1.0 - 2.0 * self.alpha) * self.levels

    def quantize(self, y: Tensor) -> Tensor:
        """Integer levels (n, D) (int64) of pixel-space values y: floor, clamped into 0..levels - 1."""
        check_tensor("y", y)
        return torch.floor(y).clamp(0, self.levels - 1).to(torch.int64)

    def levels_from_logit(self, z: Tensor) -> Tensor:
        """Generated logits z (n, D) -> integer levels (n, D): the decoding used for images and metrics."""
        return self.quantize(self.from_logit(z))

    def pixel_log_prob(self, log_prob_z: Tensor, y: Tensor) -> Tensor:
        """log p_y(y) (n,) from a model's log p_z(z(y)) (n,): adds the log-Jacobian of the logit transform."""
        check_tensor("log_prob_z", log_prob_z, ndim=1, rows=y.shape[0])
        return log_prob_z + self.log_abs_det_dz_dy(y).to(log_prob_z)
