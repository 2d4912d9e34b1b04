"""Every module of shared_embed, flows and diffusion declares its public names in ``__all__``: each listed name
exists, and every top-level function and class without a leading underscore is listed."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared_embed", "flows", "diffusion")
#: modules that do not declare ``__all__`` yet
WITHOUT_ALL = {"shared_embed/checkpoint.py"}
MODULES = sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _defined_functions_and_classes(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in tree.body if isinstance(node, kinds) and not node.name.startswith("_")}


@pytest.mark.parametrize("path", [m for m in MODULES if m not in WITHOUT_ALL])
def test_module_declares_its_public_names(path: str) -> None:
    module = importlib.import_module(_module_name(path))
    listed = getattr(module, "__all__", None)
    assert listed is not None, f"{path} has no __all__"
    assert len(set(listed)) == len(listed), f"{path}: __all__ repeats a name"
    assert not [n for n in listed if not hasattr(module, n)], f"{path}: __all__ names a missing attribute"
    unlisted = _defined_functions_and_classes(path) - set(listed)
    assert not unlisted, f"{path} defines public {sorted(unlisted)} but does not list them in __all__"
