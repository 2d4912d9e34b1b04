"""The label marginal q(y), Domain Guidance and fine-tuning against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import DiffusionHead
from diffusion.tgdp import (
    DomainGuidanceScore,
    LabelMarginal,
    domain_guidance_score,
    fine_tune,
)
from shared_embed import DataError
from shared_embed.train import TrainConfig
from tests.diffusion.tgdp.two_gaussians import (
    F64,
    SOURCE,
    TARGET,
    TASK,
    grid,
)


def test_label_marginal_smoothing_formula_and_sampling() -> None:
    """Counts (3, 7) of labels (-1, +1): smoothing 1 gives (3+1, 7+1) / 12, smoothing 0 the frequencies,
    a label missing from y keeps mass smoothing / (n + K smoothing). log_prob reads the right entry;
    sample frequencies match within 4 binomial sd at n = 20000; kl_from is the closed form."""
    y = torch.tensor([-1.0] * 3 + [1.0] * 7)[:, None]
    labels = torch.tensor([-1.0, 1.0])
    q = LabelMarginal.fit(y, labels)
    torch.testing.assert_close(q.probs, torch.tensor([4 / 12, 8 / 12]))
    torch.testing.assert_close(LabelMarginal.fit(y, smoothing=0.0).probs, torch.tensor([0.3, 0.7]))
    torch.testing.assert_close(
        LabelMarginal.fit(torch.ones(5, 1), labels, smoothing=0.5).probs, torch.tensor([0.5 / 6, 5.5 / 6])
    )
    torch.testing.assert_close(
        q.log_prob(torch.tensor([[1.0], [-1.0], [1.0]])), torch.tensor([8 / 12, 4 / 12, 8 / 12]).log()
    )
    draws = q.sample(20_000, torch.Generator().manual_seed(0))
    assert draws.shape == (20_000, 1)
    freq = float((draws == 1.0).double().mean())
    assert abs(freq - 8 / 12) < 4 * math.sqrt((8 / 12) * (4 / 12) / 20_000)
    truth = torch.tensor([0.5, 0.5])
    assert math.isclose(q.kl_from(truth), 0.5 * math.log(0.5 / (4 / 12)) + 0.5 * math.log(0.5 / (8 / 12)), rel_tol=1e-6)
    with pytest.raises(DataError, match="labels outside"):
        LabelMarginal.fit(torch.tensor([[2.0]]), labels)


def test_domain_guidance_interpolates_source_and_fine_tuned_scores() -> None:
    """s_src + w (s_ft - s_src): w = 0 gives the source score, w = 1 the fine-tuned one exactly, and values
    in between and beyond lie on the line (1 - w) s_src + w s_ft (float64, 1e-12)."""
    x = grid()
    t = torch.full((81,), 0.3, dtype=F64)
    src, ft = SOURCE(x, t, None), TARGET(x, t, None)
    torch.testing.assert_close(DomainGuidanceScore(SOURCE, TARGET, 0.0)(x, t), src, rtol=0, atol=0)
    torch.testing.assert_close(DomainGuidanceScore(SOURCE, TARGET, 1.0)(x, t), ft, rtol=0, atol=1e-12)
    for w in (0.25, 0.5, 1.5):
        torch.testing.assert_close(
            domain_guidance_score(SOURCE, TARGET, w)(x, t), (1 - w) * src + w * ft, rtol=0, atol=1e-12
        )
    with pytest.raises(DataError, match="weight"):
        DomainGuidanceScore(SOURCE, TARGET, -1.0)


def test_fine_tune_leaves_the_source_head_untouched() -> None:
    """fine_tune trains a copy: the source head's parameters (bitwise) and requires_grad flags are unchanged,
    the copy's parameters moved and are trainable."""
    torch.manual_seed(0)
    head = DiffusionHead(2, width=16, blocks=1, time_features=8).double()
    head.requires_grad_(False)  # a frozen source model
    before = {k: v.clone() for k, v in head.state_dict().items()}
    x = TASK.sample(64, "target", torch.Generator().manual_seed(0)).x.double()
    tuned, history = fine_tune(head, x, config=TrainConfig(steps=5, batch_size=32, description="ft"))
    assert history.steps_done == 5 and tuned is not head
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not any(p.requires_grad for p in head.parameters())
    assert any(not torch.equal(p, before[k]) for k, p in tuned.state_dict().items())
    assert all(p.requires_grad for p in tuned.parameters())
