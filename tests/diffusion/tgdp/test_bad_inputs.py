"""Bad input to the TGDP calls raises the documented errors, naming the argument."""

from __future__ import annotations

import pytest
import torch

from diffusion.tgdp import (
    DensityRatio,
    DomainClassifier,
    FunctionGuidance,
    GuidanceNetwork,
    GuidedScore,
    TGDPConfig,
    fit_domain_classifier,
    fit_tgdp,
    guidance_loss,
)
from shared_embed import ConfigError, DataError, DTypeError, ShapeError
from shared_embed.train import TrainConfig
from tests.diffusion.tgdp.two_gaussians import (
    EXACT,
    F64,
    SCH,
    SOURCE,
)


def test_bad_inputs_raise_documented_errors_naming_the_argument(domains) -> None:
    """Wrong dims, one-sided contexts, NaN, unknown names, bad prior factors and times: the documented
    ``shared_embed.errors`` types, each message naming the argument."""
    xs, ys, xt, yt = domains[0][:20], domains[1][:20], domains[2][:10], domains[3][:10]
    tiny = TGDPConfig(classifier_train=TrainConfig(steps=1), guidance_train=TrainConfig(steps=1))
    with pytest.raises(ShapeError, match="target_x"):
        fit_tgdp(SOURCE, xs, torch.zeros(10, 3, dtype=F64), config=tiny)
    with pytest.raises(ShapeError, match="target_x"):
        fit_domain_classifier(xs, torch.zeros(10, 3, dtype=F64))
    with pytest.raises(ShapeError, match="source_context and target_context"):
        fit_tgdp(SOURCE, xs, xt, source_context=ys, config=tiny)
    with pytest.raises(ShapeError, match="source_context and target_context"):
        fit_domain_classifier(xs, xt, target_context=yt)
    with pytest.raises(ShapeError, match="target_context"):
        fit_tgdp(SOURCE, xs, xt, source_context=ys, target_context=yt[:5], config=tiny)
    bad = xs.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(DataError, match="source_x"):
        fit_tgdp(SOURCE, bad, xt, config=tiny)
    with pytest.raises(DataError, match="target_x"):
        fit_domain_classifier(xs, bad)
    with pytest.raises(ConfigError, match="positivity"):
        GuidanceNetwork(2, positivity="relu")
    with pytest.raises(ConfigError, match="damping"):
        GuidanceNetwork(2, damping="beta")
    with pytest.raises(ConfigError, match="positivity"):
        TGDPConfig(positivity="abs")
    with pytest.raises(ConfigError, match="damping"):
        TGDPConfig(damping="sqrt")
    with pytest.raises(DataError, match="eta_cycle"):
        TGDPConfig(eta_cycle=-1.0)
    with pytest.raises(ConfigError, match="prior_factor"):
        DensityRatio(DomainClassifier(2), prior_factor=0.0)
    net = GuidanceNetwork(2, hidden=(8,)).double()
    with pytest.raises(ShapeError, match="x"):
        net.h(torch.zeros(4, 3, dtype=F64), 0.5)
    with pytest.raises(DataError, match="t"):
        net.h(torch.zeros(4, 2, dtype=F64), 1.5)
    with pytest.raises(ShapeError, match="context"):
        net.h(torch.zeros(4, 2, dtype=F64), 0.5, torch.zeros(4, 1, dtype=F64))
    with pytest.raises(ShapeError, match="t is required"):
        DomainClassifier(2, time_dependent=True).logit(torch.zeros(4, 2))
    with pytest.raises(ShapeError, match="w0"):
        guidance_loss(net, SCH, xs, torch.ones(5, dtype=F64))
    with pytest.raises(DataError, match="w0"):
        guidance_loss(net, SCH, xs, torch.full((20,), float("nan"), dtype=F64))
    with pytest.raises(DTypeError, match="source_score"):
        GuidedScore("not a score", EXACT)
    with pytest.raises(DTypeError, match="guidance"):
        GuidedScore(SOURCE, object())
    with pytest.raises(TypeError, match="log_h"):
        FunctionGuidance(3)
