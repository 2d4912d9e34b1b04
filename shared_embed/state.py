"""Training state <-> (tensors, JSON) so that resume checkpoints go through safetensors, never pickle."""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["flatten_training_state", "unflatten_training_state"]


def flatten_training_state(
    *,
    module: dict[str, Tensor],
    optimizer: dict[str, Any],
    scheduler: dict[str, Any],
    torch_rng: Tensor,
    epoch_gen_state: Tensor,
    best_state: dict[str, Tensor] | None,
) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split a training state into a flat tensor dict and a JSON-serialisable dict."""
    tensors: dict[str, Tensor] = {f"module/{k}": v for k, v in module.items()}
    if best_state is not None:
        tensors.update({f"best/{k}": v for k, v in best_state.items()})
    optim_scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in optimizer["state"].items():
        for name, value in pstate.items():
            if isinstance(value, Tensor):
                tensors[f"optim/{pid}/{name}"] = value
            else:
                optim_scalars.setdefault(str(pid), {})[name] = value
    tensors["rng/torch"] = torch_rng
    tensors["rng/epoch"] = epoch_gen_state
    extra = {
        "optimizer_param_groups": optimizer["param_groups"],
        "optimizer_scalars": optim_scalars,
        "scheduler": {k: v for k, v in scheduler.items() if k != "lr_lambdas"},
        "has_best": best_state is not None,
    }
    return tensors, extra


def unflatten_training_state(tensors: dict[str, Tensor], extra: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten_training_state`."""
    module: dict[str, Tensor] = {}
    best: dict[str, Tensor] = {}
    optim_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        head, _, rest = key.partition("/")
        if head == "module":
            module[rest] = value
        elif head == "best":
            best[rest] = value
        elif head == "optim":
            pid, _, name = rest.partition("/")
            optim_state.setdefault(int(pid), {})[name] = value
    for pid, scalars in extra.get("optimizer_scalars", {}).items():
        optim_state.setdefault(int(pid), {}).update(scalars)
    scheduler = dict(extra["scheduler"])
    scheduler["lr_lambdas"] = [None] * len(extra["optimizer_param_groups"])
    return {
        "module": module,
        "best_state": best if extra.get("has_best") else None,
        "optimizer": {"state": optim_state, "param_groups": extra["optimizer_param_groups"]},
        "scheduler": scheduler,
        "torch_rng": tensors["rng/torch"],
        "epoch_gen_state": tensors["rng/epoch"],
    }
