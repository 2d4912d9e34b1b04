"""A plain MLP builder shared by the encoder, the baseline head and the upper floors' networks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .validation import check_choice, check_positive_int

__all__ = ["ACTIVATIONS", "mlp"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def mlp(in_features: int, out_features: int, hidden: Sequence[int], activation: str = "silu") -> nn.Sequential:
    """``Linear -> act -> ... -> Linear`` mapping (.., in_features) to (.., out_features)."""
    check_positive_int("in_features", in_features)
    check_positive_int("out_features", out_features)
    for i, h in enumerate(hidden):
        check_positive_int(f"hidden[{i}]", h)
    act = ACTIVATIONS[check_choice("activation", activation, ACTIVATIONS)]
    sizes = [in_features, *hidden, out_features]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)
