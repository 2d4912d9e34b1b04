"""Seeding draws from a ``torch.Generator`` when a library underneath only reads torch's global RNG."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import DTypeError

__all__ = ["check_generator", "global_rng_from", "isolated_global_rng"]


def check_generator(generator: object) -> torch.Generator | None:
    """``generator`` if it is a ``torch.Generator`` or None; a DTypeError naming the argument otherwise."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise DTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


@contextlib.contextmanager
def global_rng_from(generator: torch.Generator | None, device: torch.device) -> Iterator[None]:
    """Inside the block, torch's global RNG is seeded from ``generator``; outside, it is left as it was.

    For libraries whose samplers take no generator (zuko's flows): the same generator state gives the same
    draws, the generator advances, and the caller's global stream is untouched. ``None``: a plain block.
    """
    generator = check_generator(generator)
    if generator is None:
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    with isolated_global_rng(seed, device):
        yield


@contextlib.contextmanager
def isolated_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Inside the block, torch's global RNG (CPU, and ``device``'s when it is an accelerator) is seeded with
    ``seed``; on leaving, even by an exception, it is restored to the state it had before the block."""
    accelerator = device.type != "cpu"
    with torch.random.fork_rng(
        devices=[device] if accelerator else [], device_type=device.type if accelerator else None
    ):
        torch.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)  # this device's only: the fork restores no other
        elif device.type == "mps":
            torch.mps.manual_seed(seed)
        elif accelerator:
            torch.manual_seed(seed)
        yield
