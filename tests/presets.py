"""The shipped study configs with a preset overlay, as the tests use them (``gentransfer run CONFIG --preset NAME``
on the command line): the one place a test gets a seconds-long digits, completion or TGDP study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from theory.engine.config_files import read_config, resolve_config


def preset_args(config: str, preset: str = "smoke") -> list[str]:
    """The command-line words that name a shipped config with its preset: ``[config, "--preset", preset]``."""
    return [config, "--preset", preset]


def preset_settings(config: str, preset: str = "smoke") -> Any:
    """The settings object (DigitsExperiment, CompletionExperiment, TGDPSettings) of the shipped ``config`` with
    its ``preset`` overlay, through the study's own reader."""
    from theory.engine.study import get_study, kind_of

    raw = read_config(resolve_config(Path(config)), preset)
    return get_study(kind_of(raw)).parse(raw)[1]
