"""Config files without torch: TOML reading, ``--set`` overrides and the shipped configs' folder.

Everything here imports only the standard library and :mod:`shared_embed.errors`, so the command line
reports a missing or malformed config file before it loads torch. :mod:`theory.engine.config` re-exports
these names and validates what they read.

Example:
    >>> raw = apply_override(read_toml(resolve_config(Path("smoke"))), "grid.seeds=[0]")
    >>> raw["grid"]["seeds"]
    [0]
"""

from __future__ import annotations

import os
import sys
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

__all__ = ["apply_override", "parse_value", "read_toml", "resolve_config", "shipped_configs"]


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
