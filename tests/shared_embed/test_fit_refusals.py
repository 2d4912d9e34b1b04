"""The library refuses what cannot be fitted (too few rows for the model, a constant column) and says when a fit
never beat its initial model, on the returned history and in the fit's summary."""

from __future__ import annotations

import pytest
import torch

from shared_embed import Encoder, GaussianHead, PairedData, TrainConfig, TransferConfig, fit_source, fit_target_head
from shared_embed.errors import DataError
from shared_embed.transfer import fit_variants, min_fit_rows

QUICK = TrainConfig(steps=5, eval_every=5)


def pairs(n: int = 200, d_c: int = 5, seed: int = 0) -> PairedData:
    gen = torch.Generator().manual_seed(seed)
    c = torch.randn(n, d_c, generator=gen)
    return PairedData(c, c[:, :2] + 0.3 * torch.randn(n, 2, generator=gen))


def test_the_minimum_rows_are_stated_from_the_simplest_models_parameters() -> None:
    assert min_fit_rows(2) == 4 and min_fit_rows(16) == 18


@pytest.mark.parametrize("n", [1, 3])
def test_fit_source_on_too_few_rows_is_refused(n: int) -> None:
    with pytest.raises(
        DataError,
        match=f"source has {n} row\\(s\\); a fit on a 2-feature context needs at least 4 \\(context features \\+ 2",
    ):
        fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), pairs(n), QUICK)


def test_fit_target_head_on_two_rows_is_refused() -> None:
    source = fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), pairs(), QUICK)
    with pytest.raises(DataError, match="target has 2 row\\(s\\).*needs at least 4"):
        fit_target_head(source, GaussianHead(2, 2), pairs(2), QUICK)


def test_a_constant_column_of_x_or_an_all_constant_c_is_refused_naming_the_argument() -> None:
    data = pairs()
    x = data.x.clone()
    x[:, 1] = 4.0
    flat = PairedData(data.c, x)
    with pytest.raises(DataError, match="source.x column 1 is constant \\(zero variance over 200 rows"):
        fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), flat, QUICK)
    with pytest.raises(DataError, match="target.x column 1 is constant"):
        fit_variants(lambda k: GaussianHead(2, k), pairs(), flat, TransferConfig(), ["no_transfer"])
    with pytest.raises(DataError, match="source.c is constant in every column"):
        fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), PairedData(torch.ones(200, 5), data.x), QUICK)


def test_a_single_constant_condition_column_is_fitted_as_it_is() -> None:
    """Real conditions have them (an 8x8 digit's blank corner pixels): no information, no harm."""
    data = pairs()
    c = data.c.clone()
    c[:, 3] = 4.0
    model = fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), PairedData(c, data.x), QUICK)
    assert torch.isfinite(model.log_prob(data.x, c)).all()


def test_a_fit_that_never_beat_its_initial_model_warns_on_its_history_and_summary() -> None:
    config = TrainConfig(steps=50, eval_every=10, lr=1.0, description="target")
    results = fit_variants(
        lambda k: GaussianHead(2, k), pairs(), pairs(seed=1), TransferConfig(target_train=config), ["no_transfer"]
    )
    history = results["no_transfer"].histories["target"]
    assert not history.improved and len(history.warnings) == 1
    assert (
        "target fit never beat its initial model" in history.warnings[0] and "lower lr (now 1)" in history.warnings[0]
    )
    assert results["no_transfer"].summary()["warnings"] == [f"target: {history.warnings[0]}"]
    good = fit_source(
        Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), pairs(), TrainConfig(steps=200, eval_every=50, lr=1e-2)
    )
    assert good.history.improved and good.history.warnings == []  # a fit that does improve says nothing


def test_a_grid_whose_cells_could_not_be_fitted_is_refused_before_any_cell() -> None:
    from shared_embed.errors import ConfigError
    from tests.theory.engine.test_run_folder import raw
    from theory.engine.config import ExperimentConfig
    from theory.studies.transfer.sweep import check_study

    exact = {**raw(variants=["direct"], n_t=[8, 40], heads=["lin"]), "heads": {"lin": {"kind": "linear_gaussian"}}}
    with pytest.raises(
        ConfigError,
        match="grid.n_t = 8: variant direct of head lin fits a model on a "
        "16-feature context and needs at least 18 pairs",
    ):
        check_study(ExperimentConfig.from_dict(exact))
    check_study(ExperimentConfig.from_dict({**exact, "grid": {**exact["grid"], "n_t": [18, 40]}}))
    # a trained head on c is early-stopped like any other: a few-shot grid is allowed
    check_study(ExperimentConfig.from_dict(raw(variants=["direct"], n_t=[8, 40])))
