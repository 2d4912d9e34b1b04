"""Config files without torch: TOML reading, presets, ``--set`` overrides and the shipped configs' folder.

A config may carry named presets: ``[presets.NAME]`` tables, each an overlay of the file's own tables (a table
merges key by key, recursively; any other value, a list included, replaces). ``read_config(path, "smoke")`` is the
file with its ``smoke`` overlay; without a preset the ``[presets]`` table is dropped, so a preset never changes
the plain config or its fingerprint. This is the one preset mechanism of every study (``gentransfer run CONFIG
--preset smoke``): a shipped study config states its small ``smoke`` grid (seconds, for the tests) and, where it
has one, its ``quick`` grid beside its full settings.

Everything here imports only the standard library and :mod:`shared_embed.errors`, so the command line
reports a missing or malformed config file before it loads torch. :mod:`theory.engine.config` re-exports
these names and validates what they read.

Example:
    >>> raw = read_config(resolve_config(Path("digits")), "smoke", ["grid.seeds=[1]"])
    >>> raw["grid"]["seeds"], "presets" in raw
    ([1], False)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared_embed.errors import ConfigError, GentransferError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    try:
        import tomli as tomllib
    except ModuleNotFoundError as err:
        raise ImportError("reading TOML configs on Python 3.10 needs the 'tomli' package: pip install tomli") from err

__all__ = [
    "PRESETS",
    "apply_override",
    "apply_preset",
    "merge_tables",
    "presets_of",
    "parse_value",
    "read_config",
    "read_toml",
    "resolve_config",
    "shipped_configs",
]

#: the top-level table of a config file that holds its named overlays
PRESETS = "presets"


def parse_value(text: str) -> Any:
    """A TOML value (``3``, ``1e-3``, ``[50, 100]``, ``"a"``, ``true``); anything else is a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(raw: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Set ``a.b.c=value`` in the raw config dict (creating tables as needed); returns ``raw``."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.sub=value")
    key, _, text = assignment.partition("=")
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {assignment!r} has an empty key part")
    node = raw
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {assignment!r}: {'.'.join(parts[: i + 1])!r} is a value, not a table")
        node = nxt
    node[parts[-1]] = parse_value(text.strip())
    return raw


def read_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw dict of a TOML file; ConfigError for a missing file or a syntax error (with its position)."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as err:
        raise ConfigError(f"config file {os.fspath(path)!r} does not exist") from err
    except IsADirectoryError as err:
        raise ConfigError(f"config file {os.fspath(path)!r} is a folder, not a TOML file") from err
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"config file {os.fspath(path)!r} is not UTF-8 text (a binary file, or UTF-16?): "
            f"{err.reason} at byte {err.start}"
        ) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"config file {os.fspath(path)!r} is not valid TOML: {err}") from err
    except OSError as err:
        raise ConfigError(f"config file {os.fspath(path)!r} cannot be read: {err.strerror}") from err


def shipped_configs() -> Path:
    """The folder of the configs that ship with gentransfer: ``theory/configs/`` where it was installed from a
    wheel (the package data ``theory.configs``), the source tree's ``configs/`` in a checkout (editable too)."""
    here = Path(__file__).resolve().parents[1]
    installed = here / "configs"
    return installed if installed.is_dir() else here.parent / "configs"


def resolve_config(config: Path) -> Path:
    """``config`` if that file exists, else the shipped config of that name (``default``, ``default.toml``
    or ``configs/default.toml``); a GentransferError listing the shipped names otherwise."""
    if config.is_file():
        return config
    if config.is_dir():
        raise GentransferError(f"config {os.fspath(config)!r} is a folder, not a TOML file")
    folder = shipped_configs()
    candidate = folder / (config.name if config.suffix == ".toml" else f"{config.name}.toml")
    if candidate.is_file() and (config.parent == Path(".") or config.parent.name == "configs"):
        return candidate
    names = ", ".join(sorted(p.stem for p in folder.glob("*.toml"))) or "none found"
    raise GentransferError(f"no config file {config}; shipped configs (give the name or a path): {names}")


def merge_tables(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``overlay`` merged over it (tables merge recursively; any other value, a list
    included, replaces the base's). Neither argument is changed."""
    out = dict(base)
    for key, value in overlay.items():
        old = out.get(key)
        out[key] = merge_tables(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return out


def presets_of(raw: dict[str, Any], source: str = "the config") -> dict[str, dict[str, Any]]:
    """The named overlays of a raw config (its ``[presets]`` table; empty when it has none), checked to be tables."""
    presets = raw.get(PRESETS, {})
    if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
        raise ConfigError(f"[{PRESETS}] of {source} must hold tables [{PRESETS}.NAME], got {presets!r}")
    return presets


def apply_preset(raw: dict[str, Any], preset: str | None, source: str = "the config") -> dict[str, Any]:
    """``raw`` without its ``[presets]`` table, with the overlay ``[presets.PRESET]`` merged over it when
    ``preset`` is given; ConfigError naming the presets ``source`` has when it has no such preset."""
    presets = presets_of(raw, source)
    plain = {k: v for k, v in raw.items() if k != PRESETS}
    if preset is None:
        return plain
    if preset not in presets:
        have = ", ".join(sorted(presets)) or "none"
        raise ConfigError(f"{source} has no preset {preset!r}; its presets: {have}")
    return merge_tables(plain, presets[preset])


def read_config(
    path: str | os.PathLike[str], preset: str | None = None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """The raw dict of a config file as a run uses it: the file, its ``preset`` overlay (None: none), then the
    ``key=value`` ``overrides`` in order. ConfigError for a missing or malformed file or an unknown preset."""
    raw = apply_preset(read_toml(path), preset, f"config file {os.fspath(path)!r}")
    for assignment in overrides:
        apply_override(raw, assignment)
    return raw
