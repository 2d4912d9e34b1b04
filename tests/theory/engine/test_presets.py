"""Presets: named overlays of a config file's own tables, the one way every study gets a smaller size."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared_embed.errors import ConfigError
from theory.engine.config import load_config
from theory.engine.config_files import (
    apply_preset,
    merge_tables,
    presets_of,
    read_config,
    read_toml,
    resolve_config,
    shipped_configs,
)
from theory.engine.study import get_study, kind_of

BASE = {
    "grid": {"n_s": [100], "n_t": [10, 20], "seeds": [0, 1], "heads": ["gaussian"]},
    "train": {"source": {"steps": 100, "eval_every": 10}},
    "presets": {"small": {"grid": {"n_t": [10]}, "train": {"source": {"steps": 5}}}},
}


def test_an_overlay_merges_tables_key_by_key_and_replaces_everything_else() -> None:
    merged = apply_preset(BASE, "small")
    assert merged["grid"] == {"n_s": [100], "n_t": [10], "seeds": [0, 1], "heads": ["gaussian"]}
    assert merged["train"] == {"source": {"steps": 5, "eval_every": 10}}  # a nested table merges too
    assert "presets" not in merged and BASE["grid"]["n_t"] == [10, 20]  # the base is left alone
    assert merge_tables({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}  # lists replace, never concatenate


def test_no_preset_drops_the_presets_table_so_the_plain_config_is_unchanged(tmp_path: Path) -> None:
    """Editing a preset must not change the plain run's settings or its folder's fingerprint."""
    plain = tmp_path / "plain.toml"
    plain.write_text('[grid]\nn_s = [100]\nn_t = [10, 20]\nheads = ["gaussian"]\n')
    with_presets = tmp_path / "with.toml"
    with_presets.write_text(plain.read_text() + "\n[presets.small.grid]\nn_t = [10]\n")
    a, b = load_config(plain), load_config(with_presets)
    assert a.to_dict() == b.to_dict() and a.fingerprint() == b.fingerprint()
    assert load_config(with_presets, preset="small").grid.n_t == [10]


def test_an_unknown_preset_names_the_ones_the_file_has(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no preset 'tiny'; its presets: smoke"):
        read_config(resolve_config(Path("digits")), "tiny")
    with pytest.raises(ConfigError, match="has no preset 'smoke'; its presets: none"):
        read_config(resolve_config(Path("default")), "smoke")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nn_s = [1]\npresets = 3\n[presets]\nsmoke = 1\n")
    with pytest.raises(ConfigError, match=r"\[presets\] of config file .* must hold tables"):
        read_config(bad, "smoke")


def test_overrides_apply_after_the_preset() -> None:
    raw = read_config(resolve_config(Path("digits")), "smoke", ["grid.seeds=[3]"])
    assert raw["grid"]["seeds"] == [3] and raw["grid"]["per_class"] == [5]


@pytest.mark.parametrize("path", sorted(shipped_configs().glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_preset_is_a_valid_config_of_its_study(path: Path) -> None:
    """Each preset of each shipped config resolves through its study's reader, and no shipped config stands
    beside another as a copy at a smaller size (no ``*_smoke.toml``): sizes are presets."""
    assert not path.stem.endswith(("_smoke", "_quick"))
    for name in sorted(presets_of(read_toml(path))):
        preset = read_config(path, name)
        get_study(kind_of(preset)).resolved(preset)
