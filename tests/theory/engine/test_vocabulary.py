"""One configuration vocabulary: every study's config says seeds, sizes, heads, head options, training phases and
the encoder with the same tables and keys, and errors name the key as the config writes it."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from shared_embed.errors import ConfigError
from theory.engine.config_files import read_config, read_toml, shipped_configs
from theory.engine.study import get_study, kind_of
from theory.engine.vocabulary import Vocabulary

CELL_STUDIES = ("digits", "digits_tgdp", "digits_tgdp_band", "digits_tgdp_reflect", "completion", "tgdp_simulation")
WORDS = Vocabulary(
    "toy", (("grid.seeds", "seeds"), ("heads.*.options", "head_options.*"), ("heads.*.train", "train.*"))
)


def test_fold_moves_the_shared_tables_into_the_settings_and_unfold_moves_them_back() -> None:
    raw = {
        "grid": {"seeds": [0, 1]},
        "heads": {"flow": {"options": {"bins": 8}, "train": {"source": {"steps": 5}}}},
        "toy": {"style": "x"},
    }
    folded = WORDS.fold(raw)
    assert folded == {
        "style": "x",
        "seeds": [0, 1],
        "head_options": {"flow": {"bins": 8}},
        "train": {"flow": {"source": {"steps": 5}}},
    }
    assert WORDS.unfold(folded) == raw


def test_a_shared_idea_in_the_study_table_names_its_shared_key() -> None:
    with pytest.raises(ConfigError, match=r"toy.seeds is a shared setting: write it as grid.seeds"):
        WORDS.fold({"toy": {"seeds": [0]}})
    with pytest.raises(ConfigError, match=r"toy.head_options is a shared setting: write it as heads.NAME.options"):
        WORDS.fold({"toy": {"head_options": {}}})


def test_a_shared_key_the_study_has_no_field_for_is_unknown() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'grid.n_s' in a toy config; valid keys of \[grid\]: seeds"):
        WORDS.fold({"grid": {"n_s": [10]}})
    with pytest.raises(
        ConfigError, match=r"unknown key 'heads.flow.sample'.*valid keys of \[heads.flow\]: options, train"
    ):
        WORDS.fold({"heads": {"flow": {"sample": {}}}})
    with pytest.raises(ConfigError, match=r"'heads.flow' must be a table"):
        WORDS.fold({"heads": {"flow": 3}})


@pytest.mark.parametrize(
    "override, match",
    [
        ("grid.seeds=3", "'grid.seeds' must be a list"),
        ('grid.per_class=[5, "a"]', r"'grid.per_class\[1\]' must be an integer"),
        ("heads.flow.train.source.stpes=3", r"unknown key 'heads.flow.train.source.stpes'"),
        ('encoder.val_fraction="0.2"', "'encoder.val_fraction' must be a number"),
        ("digits.seeds=[0]", "digits.seeds is a shared setting: write it as grid.seeds"),
    ],
)
def test_a_bad_value_is_named_as_the_config_writes_it(override: str, match: str) -> None:
    raw = read_config(shipped_configs() / "digits.toml", None, [override])
    with pytest.raises(ConfigError, match=match):
        get_study("digits").resolved(raw)


def test_tgdp_errors_name_the_shared_keys_too() -> None:
    raw = read_config(shipped_configs() / "tgdp_simulation.toml", None, ['grid.n_t=[10, "a"]'])
    with pytest.raises(ConfigError, match=r"'grid.n_t\[1\]' must be an integer"):
        get_study("tgdp").resolved(raw)


@pytest.mark.parametrize("name", CELL_STUDIES)
def test_the_resolved_config_is_in_the_shared_words_and_reads_back_to_the_same_settings(name: str) -> None:
    """What ``gentransfer show`` prints (and a run folder's config.json holds) is a runnable config of the same
    settings."""
    raw = read_config(shipped_configs() / f"{name}.toml")
    study = get_study(kind_of(raw))
    resolved = study.resolved(raw)
    assert {"grid", "heads"} <= set(resolved) and "seeds" in resolved["grid"]
    assert study.parse(resolved)[1].to_dict() == study.parse(raw)[1].to_dict()


@pytest.mark.parametrize("path", sorted(shipped_configs().glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_config_names_its_seeds_heads_and_phases_with_the_shared_tables(path: Path) -> None:
    raw = read_toml(path)
    kind = kind_of(raw)
    shared = {"experiment", "grid", "heads", "encoder", "train", "run", "presets"}
    transfer_only = {"task", "evaluation", "theory"}
    assert set(raw) <= shared | transfer_only | {kind}, sorted(set(raw) - shared - transfer_only)
    own = raw.get(kind, {})
    assert not {"seeds", "heads", "variants", "per_class", "n_source", "n_targets", "head_options", "train"} & set(own)


@pytest.mark.parametrize("name", CELL_STUDIES)
def test_a_shipped_study_config_states_only_what_differs_from_the_defaults(name: str) -> None:
    """Leaving out any one stated key or table of a shipped cell-study config (presets aside) changes its settings:
    nothing in it restates a default (``gentransfer show`` prints the defaults)."""
    raw = read_config(shipped_configs() / f"{name}.toml")
    study = get_study(kind_of(raw))

    def settings(config: dict) -> str:
        return json.dumps(study.parse(config)[1].to_dict(), sort_keys=True, default=list)

    want = settings(raw)
    restated = []
    for path in _paths(raw):
        trial = copy.deepcopy(raw)
        node = trial
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        try:
            same = settings(trial) == want
        except ConfigError:
            same = False
        restated += [".".join(path)] if same else []
    assert not restated, f"{name}.toml restates defaults: {restated}"


def _paths(node: dict, at: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a raw config below its grid, heads, encoder and study tables (tables and their keys)."""
    out = []
    for key, value in node.items():
        if not at and key in ("experiment", "run", "presets"):
            continue
        out.append((*at, key))
        if isinstance(value, dict):
            out += _paths(value, (*at, key))
    return out
