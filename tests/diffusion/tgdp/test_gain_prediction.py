"""predict_gain: the gain a reweighted source model must show, against its probability-flow likelihood.

Known answer: with the exact tilt guidance the composed model IS the source model tilted by w, so on any rows its
log-likelihood minus the source's is log w(x) - log E_model[w | c]; with E_model[w | c] estimated from the source
model's own draws, the prediction must match the likelihood solves within its delta-method SE. A guidance that
does not realise its ratio (the plug-in log h_t(x) = log w(x), a common shortcut) misses it by many SE.
"""

from __future__ import annotations

import math

import pytest
import torch

from diffusion import DiffusionHead
from diffusion.tgdp import (
    FunctionGuidance,
    GuidedDiffusionModel,
    QuadraticLogRatio,
    TiltGuidance,
    group_conditions,
    predict_gain,
    realised,
    reweighting_gain,
)
from shared_embed import ConditionalModel, Encoder, Standardizer
from shared_embed.errors import ConfigError, DataError, ShapeError

D, K = 2, 2
BETA = torch.tensor([1.4, -1.0], dtype=torch.float64)  # log w = BETA^T x_s in standardised units
VAR = 0.5  # the source given c: N(A h(c), VAR I) in standardised units
A = torch.tensor([[1.0, -0.5], [0.3, 0.8]], dtype=torch.float64)


class GaussianHead(DiffusionHead):
    """A diffusion head whose score is the exact score of its noised Gaussian source, N(A h, VAR I) at t = 0:
    s_t(x) = -(x - a_t A h) / (a_t^2 VAR + s_t^2). So its probability-flow likelihood is the Gaussian's and the
    exact tilt of it is the Gaussian N(A h + VAR BETA, VAR I)."""

    def _score(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        assert context is not None
        a = self.schedule.alpha(t).to(x)[:, None]
        s2 = self.schedule.sigma(t).to(x).square()[:, None]
        return -(x - a * context @ A.T.to(x)) / (a.square() * VAR + s2)


@pytest.fixture(scope="module")
def source() -> ConditionalModel:
    torch.manual_seed(0)
    head = GaussianHead(D, 2, width=8, blocks=1, divergence="exact", rtol=1e-7, atol=1e-7).double()
    x = torch.randn(64, D, dtype=torch.float64) * 2 + 1
    c = torch.nn.functional.one_hot(torch.arange(64) % K, K).double()
    return ConditionalModel(head, Encoder(K, 2).double().freeze(), Standardizer.fit(x), Standardizer.fit(c)).eval()


def _source_rows(source: ConditionalModel, c: torch.Tensor, seed: int) -> torch.Tensor:
    """Draws of the Gaussian source given c, in raw units."""
    with torch.no_grad():
        mean = source.embed(c) @ A.T
    noise = torch.randn(c.shape[0], D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return source.x_scaler.inverse(mean + VAR**0.5 * noise)


@pytest.fixture(scope="module")
def draws(source: ConditionalModel) -> tuple[torch.Tensor, torch.Tensor]:
    """2,000 source rows per condition: E_p[w | c] by Monte Carlo."""
    c = torch.nn.functional.one_hot(torch.arange(4000) % K, K).double()
    return _source_rows(source, c, 3), c


def _tilt(source: ConditionalModel, rows: torch.Tensor) -> TiltGuidance:
    ratio = QuadraticLogRatio(torch.zeros(1, D, D), BETA[None], torch.zeros(1), 1.0)
    return TiltGuidance(source.head.score, ratio, source.head.schedule, source.x_scaler(rows), max_shift=1e6)


def _rows(source: ConditionalModel) -> tuple[torch.Tensor, torch.Tensor]:
    """16 rows of the tilted target N(A h + VAR BETA, VAR I), raw units, and their conditions."""
    c = torch.nn.functional.one_hot(torch.arange(16) % K, K).double()
    with torch.no_grad():
        shift = source.x_scaler.inverse(source.x_scaler(torch.zeros(1, D)) + VAR * BETA) - torch.zeros(1, D)
    return _source_rows(source, c, 1) + shift, c


def test_the_exact_tilt_realises_the_predicted_gain(source, draws):
    x, c = _rows(source)
    model = GuidedDiffusionModel(source, _tilt(source, draws[0])).eval()
    pred = predict_gain(model, x, c, *draws)
    with torch.no_grad():
        achieved = model.log_prob(x, c) - source.log_prob(x, c)
        xs, mean = source.x_scaler(x), source.embed(c) @ A.T
    # the closed form: log N(x; m + VAR BETA, VAR) - log N(x; m, VAR) = BETA^T (x - m) - VAR |BETA|^2 / 2, up to
    # the solve's prior N(0, I) at t = 1, off by a_1 (m + VAR BETA) with a_1 = 0.0066 (up to about 1 % of the gain)
    exact = (xs - mean) @ BETA - VAR * BETA.square().sum() / 2
    assert torch.allclose(achieved, exact, rtol=1e-2, atol=1e-2), (achieved, exact)
    # the prediction: the same log w per row, E_p[w | c] from 2,000 source rows per condition
    assert pred.groups == K and 0 < pred.se < 0.1
    assert abs(float(achieved.mean()) - pred.mean) < 4 * pred.se, (float(achieved.mean()), pred.mean, pred.se)
    assert abs(pred.mean) > 10 * pred.se  # a gain far from 0: the check below has something to miss


def test_a_plug_in_guidance_misses_the_prediction(source, draws):
    """log h_t(x) = BETA^T x at every t (w of the noisy point, not E[w(x_0) | x_t]): the same log w at t_eps,
    so the same prediction, but the composed model is not the tilted source and its likelihood says so."""
    x, c = _rows(source)
    plug_in = FunctionGuidance(lambda xs, t, ctx: xs @ BETA.to(xs))
    model = GuidedDiffusionModel(source, plug_in).eval()
    exact = GuidedDiffusionModel(source, _tilt(source, draws[0])).eval()
    pred = predict_gain(model, x, c, *draws)
    assert torch.allclose(pred.per_row, predict_gain(exact, x, c, *draws).per_row, atol=1e-6)
    with torch.no_grad():
        achieved = float((model.log_prob(x, c) - source.log_prob(x, c)).mean())
    assert abs(achieved - pred.mean) > 10 * pred.se + 0.1, (achieved, pred.mean, pred.se)


def test_reweighting_gain_by_hand():
    """Two groups: source weights (1, 3) and (2, 2, 8); rows log w = log 3 (group 0) and log 8, log 2 (group 1)."""
    lw_src = torch.tensor([1.0, 3.0, 2.0, 2.0, 8.0]).log()
    src_group = torch.tensor([0, 0, 1, 1, 1])
    lw_rows = torch.tensor([3.0, 8.0, 2.0]).log()
    pred = reweighting_gain(lw_rows, torch.tensor([0, 1, 1]), lw_src, src_group)
    expect = torch.tensor([math.log(3 / 2), math.log(8 / 4), math.log(2 / 4)], dtype=torch.float64)
    assert torch.allclose(pred.per_row, expect) and pred.mean == pytest.approx(float(expect.mean()))
    # delta method: group 0 w / max = (1/3, 1), var 2/9, mean 2/3 -> 2/9 / (2 * 4/9) = 1/4; group 1 w / 8 =
    # (1/4, 1/4, 1): var 3/16, mean 1/2 -> 3/16 / (3 * 1/4) = 1/4; shares 1/3 and 2/3
    assert pred.se == pytest.approx(math.sqrt((1 / 9) * 0.25 + (4 / 9) * 0.25))
    # w = 0 on a source row is allowed (a hard selection); w = 0 on every row of a group is not
    lw_src0 = torch.tensor([-math.inf, 0.0, 0.0, 0.0, 0.0])
    assert reweighting_gain(torch.zeros(1), torch.tensor([0]), lw_src0, src_group).mean == pytest.approx(math.log(2))
    with pytest.raises(DataError, match="w = 0 at every source row"):
        reweighting_gain(torch.zeros(1), torch.tensor([0]), torch.full((5,), -math.inf), src_group)
    with pytest.raises(DataError, match="NaN"):
        reweighting_gain(torch.tensor([math.nan]), torch.tensor([0]), lw_src, src_group)
    with pytest.raises(ShapeError, match="row_group"):
        reweighting_gain(lw_rows, torch.tensor([0.0, 1.0, 1.0]), lw_src, src_group)


def test_conditions_must_repeat_in_the_source(source, draws):
    one_hot = torch.eye(3, dtype=torch.float64)
    with pytest.raises(DataError, match="c row 0 has a condition no source row has"):
        group_conditions(one_hot[[1, 1, 2, 2]], one_hot[[0]])
    with pytest.raises(DataError, match="1 source row"):
        group_conditions(one_hot[[1, 1, 2]], one_hot[[2]])
    src_group, group = group_conditions(one_hot[[1, 2, 1, 2]], one_hot[[2, 1]])
    assert src_group.tolist() == [1, 0, 1, 0] and group.tolist() == [0, 1]  # unique rows sorted: (0,0,1) first


def test_a_refused_model_predicts_no_gain_and_a_switched_one_no_prediction(source, draws):
    x, c = _rows(source)
    refused = GuidedDiffusionModel(source, None)
    pred = predict_gain(refused, x, c, *draws)
    assert torch.equal(pred.per_row, torch.zeros(16, dtype=torch.float64)) and pred.se == 0.0
    # realised only when the refused model IS the source model: any gain, however small, is not rounding
    assert realised(0.0, pred.mean, pred.se) and not realised(1e-3, pred.mean, pred.se)
    assert realised(2.0, 2.2, 0.05) and not realised(1.0, 2.2, 0.05)  # allowance 3 * 0.05 + 0.2 * 2.2 = 0.59
    switched = GuidedDiffusionModel(source, _tilt(source, draws[0]), switch=0.3)
    with pytest.raises(ConfigError, match="below t = 0.3"):
        predict_gain(switched, x, c, *draws)
