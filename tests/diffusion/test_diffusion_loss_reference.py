"""The diffusion head's training loss is the same computation as its reference form, bit for bit: a seeded fit
through the shared loop gives the identical loss history and weights whether each step calls
``DiffusionHead.loss`` or the loss written out below (input checks, stratified t, the VP schedule's scales, the
residual epsilon), so making the hot path cheaper never changes a result."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from diffusion import DiffusionHead
from shared_embed.train import TrainConfig, fit

ARCH = {"width": 16, "blocks": 2, "time_features": 8}


def reference_times(n: int, t_eps: float, like: Tensor) -> Tensor:
    """Stratified t: one per interval of length 1/n in random order, mapped to [t_eps, 1)."""
    u = (torch.randperm(n, device=like.device).to(like.dtype) + torch.rand(n, dtype=like.dtype, device=like.device)) / n
    return t_eps + (1.0 - t_eps) * u


def reference_loss(head: DiffusionHead, x: Tensor, context: Tensor | None) -> Tensor:
    """Denoising score matching in epsilon form, written out: the head's loss as a plain function."""
    x, context = head.check_inputs(x, context)
    t = reference_times(x.shape[0], head.t_eps, x)
    sch = head.schedule
    if sch.kind == "linear":
        log_a = -0.5 * (sch.beta_min * t + 0.5 * t.square() * (sch.beta_max - sch.beta_min))
    else:
        log_a = sch.log_alpha(t)
    log_s = 0.5 * torch.log(-torch.expm1(2.0 * log_a))
    a, s = log_a.exp(), log_s.exp()
    noise = torch.randn_like(x)
    x_t = a.unsqueeze(-1) * x + s.unsqueeze(-1) * noise
    out = head.net(x_t, log_s - log_a, context)
    s = s.unsqueeze(-1)
    eps = s * (x_t + out) if head.parameterization == "residual" else out
    return (eps - noise).square().mean()


def _fit(loss: str, head_options: dict, context_features: int | None, dtype: torch.dtype) -> tuple[list, dict]:
    torch.manual_seed(0)
    head = DiffusionHead(2, context_features, **ARCH, **head_options).to(dtype)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(300, 2, generator=gen, dtype=dtype)
    c = None if context_features is None else torch.randn(300, context_features, generator=gen, dtype=dtype)
    data = (x,) if c is None else (x, c)
    config = TrainConfig(steps=40, batch_size=64, eval_every=10, progress=False, seed=3)

    def step_loss(batch: tuple[Tensor, ...]) -> Tensor:
        ctx = batch[1] if len(batch) == 2 else None
        return head.loss(batch[0], ctx) if loss == "head" else reference_loss(head, batch[0], ctx)

    history = fit(head, step_loss, data, (x[:50],) if c is None else (x[:50], c[:50]), config)
    return history.train_loss + history.val_loss, head.state_dict()


@pytest.mark.parametrize(
    "head_options, context_features, dtype",
    [
        ({}, 3, torch.float32),
        ({}, None, torch.float32),
        ({"parameterization": "epsilon"}, 3, torch.float32),
        ({"schedule": "cosine"}, 3, torch.float32),
        ({}, 3, torch.float64),
    ],
)
def test_a_seeded_fit_is_bit_for_bit_the_reference(
    head_options: dict, context_features: int | None, dtype: torch.dtype
) -> None:
    got_losses, got_state = _fit("head", head_options, context_features, dtype)
    want_losses, want_state = _fit("reference", head_options, context_features, dtype)
    assert got_losses == want_losses  # exact float equality, step by step
    assert all(torch.equal(got_state[k], want_state[k]) for k in want_state)
