"""Write a config dict as TOML (the dialect ``gentransfer`` reads), so ``gentransfer show`` prints a runnable config.

Tables become ``[a.b]`` sections, lists and dicts inside lists are inline; None (unset) becomes a comment,
since TOML has no null. ``tomllib.loads(dumps(d))`` gives back d without its None entries.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if BARE_KEY.match(key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None]
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML: {value!r}")


def _is_table(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _section(path: list[str], table: dict[str, Any], out: list[str]) -> None:
    plain = [(k, v) for k, v in table.items() if not _is_table(v)]
    if path and (plain or not table):
        out.append(f"\n[{'.'.join(_key(p) for p in path)}]")
    for k, v in plain:
        out.append(f"# {_key(k)}: unset" if v is None else f"{_key(k)} = {_value(v)}")
    for k, v in table.items():
        if _is_table(v):
            _section([*path, k], v, out)


def dumps(config: dict[str, Any]) -> str:
    """TOML text for a JSON-like dict (str keys; str, int, float, bool, None, list and dict values)."""
    out: list[str] = []
    _section([], config, out)
    return "\n".join(out).lstrip("\n") + "\n"
