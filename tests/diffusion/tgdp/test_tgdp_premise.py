"""TGDP never collapses silently: the premise check's known answers, and the warning a fit emits when it fails."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from diffusion.tgdp import PremiseThresholds, TGDPConfig, check_premise, fit_tgdp
from diffusion.tgdp.premise import auc
from shared_embed.errors import ConfigError, PremiseWarning
from shared_embed.train import TrainConfig


def test_auc_known_answers():
    assert auc(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])) == 1.0
    assert auc(torch.tensor([2.0, 3.0]), torch.tensor([0.0, 1.0])) == 0.0
    assert auc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5  # ties count one half
    assert auc(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 3.0])) == 0.75


def test_uniform_weights_pass_every_check_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_premise(torch.ones(100), torch.ones(10))
    assert report.ok and report.auc == 0.5 and report.ess_fraction == pytest.approx(1.0)
    assert report.mean_weight == pytest.approx(1.0)


def test_weights_on_one_source_row_warn_naming_the_ess():
    w = torch.full((1000,), 1e-3)
    w[0] = 999.0  # E_p[w] = 1.0, ESS = (sum w)^2 / (n sum w^2) ~ 1 / n
    with pytest.warns(PremiseWarning, match=r"ESS / n_s 0.001 < 0.01"):
        report = check_premise(w, torch.full((10,), 999.0))
    assert not report.ok and len(report.failures) == 2 and report.auc == pytest.approx(0.9995)
    assert report.mean_weight == pytest.approx(1.0, abs=1e-3)


def test_a_separable_target_outside_the_support_warns_naming_auc_and_mean_weight():
    with pytest.warns(PremiseWarning, match=r"AUC 1.000 > 0.99.*E_p\[w\] 0.010 < 0.1"):
        report = check_premise(torch.full((50,), 0.01), torch.full((5,), 50.0))
    assert report.to_dict()["ok"] is False and report.to_dict()["thresholds"]["max_auc"] == 0.99
    with pytest.raises(ConfigError, match="max_auc"):
        PremiseThresholds(max_auc=0.3)
    with pytest.raises(ConfigError, match="max_mean_weight"):
        PremiseThresholds(max_mean_weight=0.5)
    with pytest.warns(PremiseWarning, match=r"E_p\[w\] 3.000 > 2"):  # an upper limit when one is stated
        check_premise(torch.full((50,), 3.0), torch.full((5,), 3.0), PremiseThresholds(max_mean_weight=2.0))


def test_fit_tgdp_checks_its_premise_before_fitting_the_guidance():
    """Source N(0, I) and a target N((8, 8), I) far outside it: the fitted classifier separates them and the fit
    warns; a target drawn from the source itself passes."""
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(400, 2, generator=gen, dtype=torch.float64)
    far = torch.randn(40, 2, generator=gen, dtype=torch.float64) + 8.0
    config = TGDPConfig(
        classifier_hidden=(16,),
        guidance_hidden=(16,),
        classifier_train=TrainConfig(steps=200, lr=3e-2, seed=0, description="classifier"),
        guidance_train=TrainConfig(steps=5, batch_size=64, seed=0, description="guidance"),
    )
    score = lambda x, t, context=None: -x  # noqa: E731
    torch.manual_seed(0)
    with pytest.warns(PremiseWarning, match="AUC"):
        fitted = fit_tgdp(score, xs, far, config=config)
    assert fitted.premise is not None and fitted.premise.auc > 0.99 and not fitted.premise.ok
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inside = fit_tgdp(score, xs, xs[:40].clone(), config=config)
    assert inside.premise.ok and inside.premise.auc < 0.99 and math.isfinite(inside.premise.ess_fraction)


def test_the_digits_out_of_support_target_warns_before_sampling():
    """Real data: the mirrored ('reflect') digits, 5 per class, against the original-style source, through the
    classifier fit_tgdp uses by default (one-hot labels as the context): separable, so the check warns (measured
    AUC 1.000, E_p[w] 0.000 in-sample)."""
    from diffusion.tgdp import fit_domain_classifier
    from shared_embed.standardize import Standardizer
    from theory.studies.digits.task import DigitsTask

    task = DigitsTask("reflect", 30, 50, 0)
    gen = torch.Generator().manual_seed(0)
    source, target = task.paired(task.splits.source, gen), task.paired(task.target_train(5), gen)
    scaler = Standardizer.fit(source.x)
    config = TGDPConfig.from_options({}, 0)
    torch.manual_seed(0)
    ratio, _ = fit_domain_classifier(
        scaler(source.x),
        scaler(target.x),
        source_context=source.c,
        target_context=target.c,
        hidden=config.classifier_hidden,
        balanced=config.balanced,
        target_batch=config.target_batch,
        config=config.classifier_train,
    )
    with torch.no_grad():
        ws, wt = ratio.ratio(scaler(source.x), None, source.c), ratio.ratio(scaler(target.x), None, target.c)
    with pytest.warns(PremiseWarning, match="AUC"):
        report = check_premise(ws, wt)
    assert report.auc > 0.99 and not report.ok
