"""GuidedDiffusionModel and its guard: known answers on a small Gaussian-like case, and loud refusals.

The source is a tiny conditional DiffusionHead with a non-trivial score (its output layer perturbed), the exact
divergence (no probes: deterministic log-densities), in float64.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from diffusion import DiffusionHead
from diffusion.tgdp import (
    FunctionGuidance,
    GuardedScore,
    GuidanceExplosionError,
    GuidanceLimit,
    GuidedDiffusionModel,
    PremiseReport,
    check_premise,
    fit_domain_classifier,
)
from shared_embed import ConditionalModel, Encoder, Standardizer
from shared_embed.errors import ConfigError, GuidanceWarning, PremiseWarning
from shared_embed.train import TrainConfig

D, K = 3, 4


@pytest.fixture(scope="module")
def source() -> ConditionalModel:
    torch.manual_seed(0)
    head = DiffusionHead(D, 2, width=16, blocks=1, divergence="exact", rtol=1e-6, atol=1e-6).double()
    torch.nn.init.normal_(head.net.out[-1].weight, std=0.05)  # a non-trivial score
    x = torch.randn(64, D, dtype=torch.float64) * 2 + 1
    c = torch.nn.functional.one_hot(torch.arange(64) % K, K).double()
    return ConditionalModel(head, Encoder(K, 2).double().freeze(), Standardizer.fit(x), Standardizer.fit(c)).eval()


def _rows(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64) * 2 + 1
    return x, torch.nn.functional.one_hot(torch.arange(n) % K, K).double()


def _constant(scale: float) -> FunctionGuidance:
    """log h = scale * sum(x): grad log h = scale * (1, ..., 1) everywhere."""
    return FunctionGuidance(lambda x, t, c: scale * x.sum(-1))


def test_zero_guidance_is_exactly_the_source_model(source):
    x, c = _rows()
    model = GuidedDiffusionModel(source, FunctionGuidance(lambda x, t, c: (x * 0).sum(-1))).eval()
    with torch.no_grad():
        assert torch.equal(model.log_prob(x, c), source.log_prob(x, c))
        a = model.sample(4, c[:4], generator=torch.Generator().manual_seed(2))
        b = source.sample(4, c[:4], generator=torch.Generator().manual_seed(2))
    assert torch.allclose(a, b, atol=1e-10)
    assert model.status == "guided" and model.report()["guard"]["exploded"] == 0


def test_a_constant_guidance_shifts_the_density_as_the_exact_composed_score_does(source):
    """grad log h = g constant: the composed score s + g. Its probability-flow density differs from the source's;
    the guard sees ratio |g| / |s| and leaves small g alone (status guided, no row clipped)."""
    x, c = _rows()
    model = GuidedDiffusionModel(source, _constant(0.05))
    with torch.no_grad():
        lp, lp0 = model.log_prob(x, c), source.log_prob(x, c)
    assert not torch.allclose(lp, lp0) and torch.isfinite(lp).all()
    assert model.status == "guided" and model.report()["guard"]["calls"] > 0


def test_exploding_guidance_is_detected_and_refused_back_to_the_source_model(source):
    x, c = _rows(12)
    model = GuidedDiffusionModel(source, _constant(1e4), limit=GuidanceLimit(max_ratio=10.0))
    with pytest.warns(GuidanceWarning, match=r"guidance explodes: .* > 10.0 x \|source score\| on 100.0%"):
        probe = model.check_guidance(x, c)
    assert probe is not None and probe.fraction == 1.0 and probe.max_ratio > 10.0
    assert model.status == "refused" and "explodes" in model.report()["refused"]
    with torch.no_grad():
        assert torch.equal(model.log_prob(x[:4], c[:4]), source.log_prob(x[:4], c[:4]))


def test_the_guard_clips_drops_or_raises_on_exploding_rows(source):
    x, c = _rows(5)
    ctx = source.embed(c)
    xs, t = source.x_scaler(x), torch.full((5,), 0.3, dtype=torch.float64)
    s = source.head.score(xs, t, ctx)
    clip = GuardedScore(source.head.score, _constant(1e4), GuidanceLimit(max_ratio=2.0, action="clip"))
    out = clip(xs, t, ctx)
    assert torch.allclose((out - s).norm(dim=-1), 2.0 * s.norm(dim=-1))  # clipped to exactly the limit
    assert clip.counts.exploded == 5 and clip.counts.fraction == 1.0 and clip.counts.max_ratio > 2.0
    drop = GuardedScore(source.head.score, _constant(1e4), GuidanceLimit(max_ratio=2.0, action="source"))
    assert torch.equal(drop(xs, t, ctx), s)
    loud = GuardedScore(source.head.score, _constant(1e4), GuidanceLimit(max_ratio=2.0, action="raise"))
    with pytest.raises(GuidanceExplosionError, match="exceeded 2.0 x"):
        loud(xs, t, ctx)
    # float32, one row clipped and the others with exactly zero guidance: the derivative that the likelihood's
    # divergence takes of the clipped score must stay finite (a 1 / |g| at |g| = 0 would overflow to NaN)
    half = FunctionGuidance(lambda x, t, c: 1e4 * (x[:, 0] - 5.0).clamp_min(0.0) + 1e-22 * x.sum(-1))
    xg = torch.cat([xs[:1] * 0 + 6.0, xs[1:4]]).float().requires_grad_(True)
    score32 = lambda x, t, c: -x  # noqa: E731
    out = GuardedScore(score32, half, GuidanceLimit(2.0))(xg, t[:4].float(), None)
    for i in range(D):
        (grad,) = torch.autograd.grad(out[:, i].sum(), xg, retain_graph=True)
        assert torch.isfinite(grad).all()
    calm = GuardedScore(source.head.score, _constant(1e-3), GuidanceLimit(max_ratio=2.0, action="raise"))
    assert torch.allclose(calm(xs, t, ctx), s + 1e-3)


def test_clipping_during_a_solve_is_reported(source):
    """With refusal off (refuse_fraction 1) an exploding guidance is clipped at every call of the solve: the
    samples stay finite and within reach of the source model's, and the status says the rows were clipped."""
    x, c = _rows(4)
    model = GuidedDiffusionModel(source, _constant(1e4), limit=GuidanceLimit(max_ratio=0.5, refuse_fraction=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.check_guidance(x, c)
    with torch.no_grad():
        z = model.sample(4, c, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(z).all() and z.abs().max() < 1e3
    rep = model.report()
    assert model.status == "clipped" and rep["guard"]["fraction"] == 1.0 and rep["probe"]["fraction"] == 1.0


def test_a_failed_premise_refuses_the_guidance_unless_told_otherwise(source):
    failed = PremiseReport(1.0, 0.5, 0.01, failures=("domain classifier AUC 1.000 > 0.99: separable",))
    model = GuidedDiffusionModel(source, _constant(0.1), premise=failed)
    assert model.status == "refused" and model.report()["refused"].startswith("premise failed: domain classifier")
    assert model.check_guidance(*_rows()) is None
    kept = GuidedDiffusionModel(source, _constant(0.1), premise=failed, refuse_on_premise=False)
    assert kept.status == "guided"


def test_a_switch_time_of_one_refuses_and_bad_settings_are_named(source):
    model = GuidedDiffusionModel(source, _constant(0.1))
    model.choose_switch(0.2, "test")
    assert model.status == "switched" and model.report()["switch"] == 0.2
    model.choose_switch(1.0, "source better on held-out rows")
    assert model.status == "refused" and "switch time 1" in model.report()["refused"]
    with pytest.raises(ConfigError, match="max_ratio"):
        GuidanceLimit(max_ratio=0.0)
    with pytest.raises(ConfigError, match="action"):
        GuidanceLimit(action="ignore")
    with pytest.raises(ConfigError, match="switch"):
        GuidedDiffusionModel(source, None, switch=1.5)
    assert GuidedDiffusionModel(source, None).report()["refused"] == "no guidance"


def test_an_out_of_support_toy_warns_before_any_guidance_is_used():
    """Source N(0, I), target N((6, 6), I): a fitted domain classifier separates them, check_premise warns
    naming the AUC, and a model given that report refuses its guidance."""
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(300, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(30, 2, generator=gen, dtype=torch.float64) + 6.0
    ratio, _ = fit_domain_classifier(xs, xt, hidden=(16,), config=TrainConfig(steps=300, lr=1e-2, seed=0))
    with torch.no_grad(), pytest.warns(PremiseWarning, match=r"AUC 1.000 > 0.99"):
        report = check_premise(ratio.ratio(xs), ratio.ratio(xt))
    assert not report.ok
    near = torch.randn(30, 2, generator=gen, dtype=torch.float64) * 0.8
    ratio, _ = fit_domain_classifier(xs, near, hidden=(16,), config=TrainConfig(steps=300, lr=1e-2, seed=0))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_premise(ratio.ratio(xs), ratio.ratio(near)).ok
