"""Experiment configs: the shipped TOML files validate, overrides apply, bad keys name themselves."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_embed.errors import ConfigError
from theory.engine.config import ExperimentConfig, apply_override, load_config, parse_value

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def minimal(**extra: dict) -> dict:
    raw = {"grid": {"n_s": [100], "n_t": [10, 20], "heads": ["gaussian"]}}
    raw.update(extra)
    return raw


#: The theory-validation configs (configs/ also holds configs of other experiments, e.g. digits.toml).
THEORY_CONFIGS = ("default.toml", "full.toml", "smoke.toml", "diffusion.toml")


@pytest.mark.parametrize("name", [n for n in THEORY_CONFIGS if (CONFIGS / n).exists()])
def test_shipped_configs_validate_and_round_trip(name: str) -> None:
    if "diffusion" in (CONFIGS / name).read_text():
        pytest.importorskip("diffusion.head", reason="the diffusion head is not available")
    cfg = load_config(CONFIGS / name)
    again = ExperimentConfig.from_dict(cfg.to_dict())
    assert again.to_dict() == cfg.to_dict()
    assert cfg.grid.n_t == sorted(cfg.grid.n_t)


def test_overrides_take_toml_values_and_bare_strings(tmp_path: Path) -> None:
    cfg = load_config(
        CONFIGS / "smoke.toml",
        [
            "grid.seeds=[3, 1]",
            "train.target.lr=3e-4",
            "run.workers=2",
            "experiment.name=renamed",
            "heads.gaussian.options.activation=tanh",
            "evaluation.n_eval = 123",
        ],
    )
    assert cfg.grid.seeds == [1, 3]
    assert cfg.train_config("gaussian", "target", seed=0).lr == pytest.approx(3e-4)
    assert cfg.run.workers == 2 and cfg.name == "renamed" and cfg.evaluation.n_eval == 123
    assert cfg.heads["gaussian"].options["activation"] == "tanh"


def test_parse_value() -> None:
    assert parse_value("[1, 2]") == [1, 2]
    assert parse_value("1e-3") == pytest.approx(1e-3)
    assert parse_value("true") is True
    assert parse_value("nflows") == "nflows"
    assert parse_value('"quoted"') == "quoted"


@pytest.mark.parametrize(
    "raw, match",
    [
        (minimal(grid={"n_s": [1], "n_t": [10], "nt": [5]}), r"unknown key 'grid.nt'.*valid keys of \[grid\]: .*n_t"),
        (minimal(bogus={}), r"unknown key 'bogus'.*valid keys.*grid"),
        (minimal(train={"target": {"learning_rate": 1}}), r"'train.target.learning_rate'.*valid.*\blr\b"),
        (minimal(train={"target": {"seed": 1}}), r"'train.target.seed'"),
        (minimal(train={"warmup": {}}), r"'train.warmup'.*valid.*floor, source, target"),
        (minimal(evaluation={"neval": 5}), r"'evaluation.neval'.*n_eval"),
        (minimal(theory={"beta": 2, "alpha": 1}), r"'theory.alpha'.*beta"),
        (minimal(run={"worker": 2}), r"'run.worker'.*workers"),
        (minimal(task={"name": "conditional_gaussian", "dc": 3}), r"'task.dc'.*d_c"),
        (minimal(heads={"gaussian": {"options": {"widths": [3]}}}), r"'heads.gaussian.options.widths'.*hidden"),
        (minimal(heads={"gaussian": {"optons": {}}}), r"'heads.gaussian.optons'.*options"),
        ({"grid": {"n_s": [1]}}, r"\[grid\] needs 'n_t'"),
        ({"task": {}}, r"needs a \[grid\]"),
        ({"grid": {"n_s": [1], "n_t": [10], "heads": ["mystery"]}}, r"mystery.*no \[heads.mystery\]"),
        ({"grid": {"n_s": [1], "n_t": [10], "variants": ["transfer", "magic"]}}, r"grid.variants\[1\].*'magic'"),
        ({"grid": {"n_s": [1], "n_t": [1.5]}}, r"'grid.n_t\[0\]' must be an integer"),
        ({"grid": {"n_s": [1], "n_t": [10, 10]}}, r"repeated"),
        (minimal(task={"name": "two_gaussian"}), r"task.name"),
        ({"grid": {"n_s": [1], "n_t": [10], "heads": ["x"]}, "heads": {"x": {"kind": "transformer"}}}, r"heads.x.kind"),
        (minimal(heads={"unused": {"kynd": "flow"}}), r"'heads.unused.kynd'"),
        (minimal(theory={"rate": "nope"}), r"unknown rate"),
    ],
)
def test_bad_configs_raise_config_errors_naming_the_key(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ExperimentConfig.from_dict(raw)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nn_s = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_override({}, "grid.n_t")
    with pytest.raises(ConfigError, match="is a value, not a table"):
        apply_override({"run": 3}, "run.workers=2")


def test_settings_hash_follows_cell_settings_not_the_grid() -> None:
    base = ExperimentConfig.from_dict(minimal())
    more = ExperimentConfig.from_dict(
        minimal(grid={"n_s": [100, 200], "n_t": [10, 20, 40], "heads": ["gaussian"], "seeds": [0, 1]})
    )
    other = ExperimentConfig.from_dict(minimal(train={"target": {"lr": 5e-4}}))
    assert base.settings_hash("gaussian") == more.settings_hash("gaussian")
    assert base.settings_hash("gaussian") != other.settings_hash("gaussian")


def test_head_overrides_merge_over_global_training() -> None:
    cfg = ExperimentConfig.from_dict(
        minimal(train={"target": {"steps": 100}}, heads={"gaussian": {"train": {"target": {"lr": 1e-2}}, "n_eval": 50}})
    )
    tc = cfg.train_config("gaussian", "target", seed=7)
    assert (tc.steps, tc.lr, tc.seed, tc.progress) == (100, 1e-2, 7, False)
    assert cfg.eval_setting("gaussian", "n_eval") == 50
    assert cfg.eval_setting("gaussian", "floor_n") == cfg.evaluation.floor_n


def test_full_config_runs_one_head_without_the_other_package() -> None:
    cfg = load_config(CONFIGS / "full.toml", ['grid.heads=["flow"]'])
    assert list(cfg.heads) == ["flow"] and cfg.heads["flow"].variants == [
        "transfer",
        "no_transfer",
        "fine_tune",
        "oracle",
    ]
