"""Argument checks and small helpers shared by the TGDP pieces: points and noised rows."""

from __future__ import annotations

from typing import Literal, overload

from torch import Tensor

from shared_embed.errors import ShapeError
from shared_embed.validation import check_tensor

from ..sampling import check_times
from ..schedule import VPSchedule, stratified_times

__all__ = ["check_points", "noised_rows"]


@overload
def check_points(
    x: Tensor, features: int, t: Tensor | float | None, *, required: Literal[True], name_t: str = "t"
) -> tuple[Tensor, Tensor]: ...
@overload
def check_points(
    x: Tensor, features: int, t: Tensor | float | None, *, required: bool, name_t: str = "t"
) -> tuple[Tensor, Tensor | None]: ...
def check_points(
    x: Tensor, features: int, t: Tensor | float | None, *, required: bool, name_t: str = "t"
) -> tuple[Tensor, Tensor | None]:
    """Check x (n, features) and t (a number or (n,) in (0, 1]); return x and t as (n,) (or None).

    Raises:
        ShapeError: wrong shapes, or t missing where ``required`` (given where not).
        DataError: non-finite values or t outside (0, 1].
    """
    check_tensor("x", x, ndim=2, last_dim=features, min_rows=1)
    if t is None:
        if required:
            raise ShapeError(f"{name_t} is required: this network is time-dependent")
        return x, None
    if not required:
        raise ShapeError(f"{name_t} must be None: this network does not read time")
    return x, check_times(name_t, t, x)


def noised_rows(schedule: VPSchedule, x0: Tensor, t_eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """Check x0 (n, d) and t_eps; draw stratified t (n,) and x_t = a_t x0 + s_t e; return (t, x_t, e).

    The common first step of every TGDP loss (L_guide, L_cycle, L_cons).
    """
    check_tensor("x0", x0, ndim=2, min_rows=1)
    t = stratified_times(x0.shape[0], t_eps, x0)
    x_t, noise = schedule.marginal(x0, t)
    return t, x_t, noise
