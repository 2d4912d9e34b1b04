"""The TGDP known-answer tests' shared draws of the two-Gaussian task."""

from __future__ import annotations

import pytest
import torch

from tests.diffusion.tgdp.two_gaussians import TASK


@pytest.fixture(scope="module")
def domains() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """n_s = 1000 source and n_t = 500 target draws (x and labels y), float64."""
    src = TASK.sample(1000, "source", torch.Generator().manual_seed(1))
    tgt = TASK.sample(500, "target", torch.Generator().manual_seed(2))
    return src.x.double(), src.c.double(), tgt.x.double(), tgt.c.double()
