"""The one config validator: every study's settings are read by the same typed readers, and a bad value is a
ConfigError naming the key by its full path, what was expected and what was given."""

from __future__ import annotations

import pytest

from shared_embed.errors import ConfigError
from shared_embed.train import TrainConfig
from theory.engine.schema import dataclass_from_table
from theory.studies.digits.experiment import DigitsExperiment
from theory.studies.tgdp.settings import TGDPSettings


def test_a_table_becomes_the_dataclass_with_defaults_kept() -> None:
    s = dataclass_from_table(TGDPSettings, {"n_targets": [10, 100], "source_train": {"steps": 7}, "rtol": 1e-3}, "tgdp")
    assert s.n_targets == (10, 100) and s.rtol == 1e-3 and s.seeds == TGDPSettings().seeds
    default = TGDPSettings().source_train
    assert isinstance(s.source_train, TrainConfig) and s.source_train.steps == 7
    assert s.source_train.lr == default.lr and s.source_train.description == default.description
    assert s.rtol == 1e-3 and isinstance(dataclass_from_table(TGDPSettings, {"rtol": 1}, "tgdp").rtol, float)


@pytest.mark.parametrize(
    ("cls", "raw", "message"),
    [
        (TGDPSettings, {"n_sourse": 10}, "unknown key 'tgdp.n_sourse'; valid keys of [tgdp]:"),
        (TGDPSettings, {"seeds": 3}, "'tgdp.seeds' must be a list, got 3"),
        (TGDPSettings, {"n_targets": [10, "a"]}, "'tgdp.n_targets[1]' must be an integer, got 'a'"),
        (TGDPSettings, {"n_eval": 1.5}, "'tgdp.n_eval' must be an integer, got 1.5"),
        (TGDPSettings, {"conditional": ["yes"]}, "'tgdp.conditional[0]' must be true or false, got 'yes'"),
        (TGDPSettings, {"source_train": {"stpes": 3}}, "unknown key 'tgdp.source_train.stpes'"),
        (TGDPSettings, {"head": 3}, "'tgdp.head' must be a table"),
        (DigitsExperiment, {"tgdp": "yes"}, "'digits.tgdp' must be true or false, got 'yes'"),
        (DigitsExperiment, {"style": 3}, "'digits.style' must be a string, got 3"),
        (DigitsExperiment, {"val_fraction": "0.2"}, "'digits.val_fraction' must be a number"),
    ],
)
def test_a_bad_value_names_its_path(cls: type, raw: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        dataclass_from_table(cls, raw, "tgdp" if cls is TGDPSettings else "digits")
    assert message in str(err.value), str(err.value)


def test_the_class_checks_run_last() -> None:
    """A well-typed value the study itself refuses (a method it does not know; per_class beyond the pool)."""
    with pytest.raises(ConfigError, match="unknown method"):
        TGDPSettings.from_dict({"methods": ["tgdp", "magic"]})
    with pytest.raises(ConfigError, match="pool_per_class"):
        dataclass_from_table(DigitsExperiment, {"per_class": [60]}, "digits")
