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
    with pytest.raises(DataError, match=f"source has {n} row\\(s\\); a fit on a 2-feature context needs at "
                                        "least 4 \\(context features \\+ 2"):
        fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), pairs(n), QUICK)


def test_fit_target_head_on_two_rows_is_refused() -> None:
    source = fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), pairs(), QUICK)
    with pytest.raises(DataError, match="target has 2 row\\(s\\).*needs at least 4"):
        fit_target_head(source, GaussianHead(2, 2), pairs(2), QUICK)


@pytest.mark.parametrize("part, column", [("x", 1), ("c", 3)])
def test_a_constant_column_is_refused_naming_the_argument_and_column(part: str, column: int) -> None:
    data = pairs()
    values = getattr(data, part).clone()
    values[:, column] = 4.0
    flat = PairedData(values, data.x) if part == "c" else PairedData(data.c, values)
    with pytest.raises(DataError, match=f"source.{part} column {column} is constant \\(zero variance over 200 rows"):
        fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), flat, QUICK)
    with pytest.raises(DataError, match=f"target.{part} column {column} is constant"):
        fit_variants(lambda k: GaussianHead(2, k), pairs(), flat, TransferConfig(), ["no_transfer"])


def test_a_fit_that_never_beat_its_initial_model_warns_on_its_history_and_summary() -> None:
    config = TrainConfig(steps=50, eval_every=10, lr=1.0, description="target")
    results = fit_variants(lambda k: GaussianHead(2, k), pairs(), pairs(seed=1), TransferConfig(target_train=config),
                           ["no_transfer"])
    history = results["no_transfer"].histories["target"]
    assert not history.improved and len(history.warnings) == 1
    assert "target fit never beat its initial model" in history.warnings[0] and "lower lr (now 1)" in history.warnings[0]
    assert results["no_transfer"].summary()["warnings"] == [f"target: {history.warnings[0]}"]
    good = fit_source(Encoder(5, 2, hidden=(8,)), GaussianHead(2, 2), pairs(), TrainConfig(steps=200, eval_every=50,
                                                                                            lr=1e-2))
    assert good.history.improved and good.history.warnings == []  # a fit that does improve says nothing


def test_a_grid_whose_cells_could_not_be_fitted_is_refused_before_any_cell() -> None:
    from shared_embed.errors import ConfigError
    from theory.engine.config import ExperimentConfig
    from theory.studies.transfer.sweep import check_study

    from tests.test_run_folder import raw

    config = ExperimentConfig.from_dict(raw(variants=["direct"], n_t=[8, 40]))
    with pytest.raises(ConfigError, match="grid.n_t = 8: variant direct of head gaussian fits a model on a "
                                          "16-feature context and needs at least 18 pairs"):
        check_study(config)
    check_study(ExperimentConfig.from_dict(raw(variants=["direct"], n_t=[18, 40])))
