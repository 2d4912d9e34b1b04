"""The baselines TGDP is compared with, trained with the same loop and scored the same way.

- target-only ("vanilla") diffusion: a fresh :class:`~diffusion.head.DiffusionHead` trained by DSM on the
  target sample (:func:`train_head`);
- fine-tuning: a copy of the source head trained further on the target (:func:`fine_tune`);
- Domain Guidance: s_src + w (s_ft - s_src) from the source and fine-tuned heads
  (:func:`~diffusion.tgdp.compose.domain_guidance_score`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import Tensor

from shared_embed.train import TrainConfig, TrainHistory, fit
from shared_embed.validation import check_context, check_matrix

from ..head import DiffusionHead

__all__ = ["fine_tune", "train_head"]


def _tensors(x: Tensor, context: Tensor | None) -> tuple[Tensor, ...]:
    return (x,) if context is None else (context, x)


def train_head(
    head: DiffusionHead,
    x: Tensor,
    context: Tensor | None = None,
    *,
    config: TrainConfig | None = None,
    val_x: Tensor | None = None,
    val_context: Tensor | None = None,
) -> TrainHistory:
    """Train ``head`` in place by its DSM loss on x (n, d) [with context (n, k)]; optional validation rows
    (val_x, val_context) enable early stopping and best-weight restoring."""
    check_matrix("x", x, head.features)
    check_context("context", context, head.context_features, rows=x.shape[0])
    val = None
    if val_x is not None:
        check_matrix("val_x", val_x, head.features)
        check_context("val_context", val_context, head.context_features, rows=val_x.shape[0])
        val = _tensors(val_x, val_context)
    conditional = head.context_features is not None

    def loss_fn(batch: Sequence[Tensor]) -> Tensor:
        return head.loss(batch[-1], batch[0] if conditional else None)

    return fit(head, loss_fn, _tensors(x, context), val, config or TrainConfig(description="diffusion head"))


def fine_tune(
    source_head: DiffusionHead,
    x: Tensor,
    context: Tensor | None = None,
    *,
    config: TrainConfig | None = None,
    val_x: Tensor | None = None,
    val_context: Tensor | None = None,
) -> tuple[DiffusionHead, TrainHistory]:
    """A copy of ``source_head`` trained further on the target x (n, d) [context (n, k)]; the source is untouched."""
    head = copy.deepcopy(source_head)
    head.requires_grad_(True)
    history = train_head(
        head,
        x,
        context,
        config=config or TrainConfig(steps=1000, lr=2e-4, description="fine-tune"),
        val_x=val_x,
        val_context=val_context,
    )
    return head, history
