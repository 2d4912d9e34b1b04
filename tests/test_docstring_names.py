"""Names that docstrings of shared_embed, flows and diffusion point at exist: a dotted path that starts with a
package of this project (``diffusion.tgdp.guidance.SourcePosterior``, :mod:`shared_embed.train`), a Sphinx role's
target (:class:`SourcePosterior`, :mod:`.classifier`, :meth:`fit`) and a call written as ``name()`` must resolve,
so renaming or moving a name cannot leave stale text behind."""

from __future__ import annotations

import ast
import builtins
import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("shared_embed", "flows", "diffusion")
PROJECT = ("gentransfer", "shared_embed", "flows", "diffusion", "theory")
MODULES = sorted(p.relative_to(ROOT).as_posix() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))

ROLE = re.compile(r":(?:mod|class|func|meth|attr|data|exc|obj):`~?([\w.]+)`")
LITERAL = re.compile(r"``([^`]+)``|(?<![`:\w])`([^`]+)`(?!`)")
DOTTED = re.compile(rf"^(?:{'|'.join(PROJECT)})(?:\.\w+)+$")
CALL = re.compile(r"^(\w+)\(\)$")


def _module_name(path: str) -> str:
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def _docstrings(path: str) -> list[tuple[int, str]]:
    """(line, text) of the module's docstring and of every class's and function's docstring in it."""
    tree = ast.parse((ROOT / path).read_text())
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)))]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node, clean=False)
        if doc:
            out.append((getattr(node, "lineno", 1), doc))
    return out


def _has_path(obj: Any, names: list[str]) -> bool:
    """Whether ``obj.n1.n2...`` exists; on a class, a constructor argument counts (an instance attribute)."""
    for i, name in enumerate(names):
        if not hasattr(obj, name):
            return inspect.isclass(obj) and i == len(names) - 1 and name in inspect.signature(obj).parameters
        obj = getattr(obj, name)
    return True


def _hook_names() -> set[str]:
    """Method names defined by some class of the packages: a hook one floor calls and another implements."""
    names = set()
    for path in MODULES:
        for value in vars(importlib.import_module(_module_name(path))).values():
            if inspect.isclass(value) and value.__module__.split(".")[0] in PACKAGES:
                names |= {n for n, v in vars(value).items() if callable(v)}
    return names


def _resolve_dotted(path: str) -> bool:
    """Whether ``a.b.c`` is a module, or a module followed by attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return _has_path(module, parts[cut:])
    return False


def _scopes(module: ModuleType) -> list[Any]:
    """Where a bare name may live: the module, its package, builtins, and the classes of the first two."""
    package = importlib.import_module(module.__name__.rpartition(".")[0] or module.__name__)
    scopes: list[Any] = [module, package, builtins]
    for holder in (module, package):
        scopes += [v for v in vars(holder).values() if inspect.isclass(v)]
    return scopes


def _resolve_bare(name: str, module: ModuleType) -> bool:
    """A name relative to the module: ``.classifier``, ``fit``, ``Head.loss``, or a project dotted path."""
    if name.startswith("."):
        is_package = Path(module.__file__ or "").name == "__init__.py"
        package = module.__name__ if is_package else module.__name__.rpartition(".")[0]
        return _resolve_dotted(package + name)
    if DOTTED.match(name):
        return _resolve_dotted(name)
    head, *rest = name.split(".")
    return any(hasattr(scope, head) and _has_path(getattr(scope, head), rest) for scope in _scopes(module))


def references(path: str) -> list[tuple[int, str, str]]:
    """(line, kind, name) of every checked reference in the docstrings of ``path``."""
    found = []
    for line, doc in _docstrings(path):
        for match in ROLE.finditer(doc):
            found.append((line, "role", match.group(1)))
        for match in LITERAL.finditer(doc):
            text = (match.group(1) or match.group(2)).strip()
            if DOTTED.match(text):
                found.append((line, "dotted", text))
            elif call := CALL.match(text):
                found.append((line, "call", call.group(1)))
    return found


def _resolves(kind: str, name: str, module: ModuleType) -> bool:
    if kind == "dotted":
        return _resolve_dotted(name)
    return _resolve_bare(name, module) or (kind == "call" and name in _hook_names())


@pytest.mark.parametrize("path", MODULES)
def test_docstring_references_resolve(path: str) -> None:
    module = importlib.import_module(_module_name(path))
    unresolved = [
        f"{path}:{line} {kind} {name!r}" for line, kind, name in references(path) if not _resolves(kind, name, module)
    ]
    assert not unresolved, "stale names in docstrings:\n" + "\n".join(unresolved)


def test_the_resolver_catches_a_stale_name() -> None:
    module = importlib.import_module("diffusion.tgdp.guidance")
    assert _resolve_dotted("diffusion.tgdp.guidance.SourcePosterior")
    assert not _resolve_dotted("diffusion.tgdp.guidance.SourcePosteriorX")
    assert not _resolve_dotted("diffusion.tgdp.nowhere")
    assert _resolve_bare(".classifier", importlib.import_module("diffusion.tgdp"))
    assert _resolve_bare("GuidanceNetwork", module) and _resolve_bare("GuidanceNetwork.log_h", module)
    assert not _resolve_bare("GuidanceNetwork.log_g", module) and not _resolve_bare("NoSuchThing", module)
    assert _resolve_bare("DensityRatio.prior_factor", importlib.import_module("diffusion.tgdp.classifier"))
    assert _resolves("call", "after_optimizer_step", importlib.import_module("shared_embed.train"))
    assert not _resolves("call", "before_optimizer_step", importlib.import_module("shared_embed.train"))
    stale = "A docstring naming ``diffusion.tgdp.guidance.Moved`` and :class:`Gone`."
    assert [m.group(1) or m.group(2) for m in LITERAL.finditer(stale)] == ["diffusion.tgdp.guidance.Moved"]
    assert [m.group(1) for m in ROLE.finditer(stale)] == ["Gone"]


def test_the_transfer_docstring_lists_every_variant_once() -> None:
    import shared_embed.transfer as transfer

    listed = re.findall(r"^- ``(\w+)``:", transfer.__doc__ or "", re.M)
    assert listed == list(transfer.VARIANTS)


def test_docstrings_link_notes_that_exist() -> None:
    linked = {m for path in MODULES for _, doc in _docstrings(path) for m in re.findall(r"docs/notes/[\w.-]+\.md", doc)}
    assert linked and all((ROOT / note).is_file() for note in linked), sorted(linked)
    index = (ROOT / "docs" / "notes" / "README.md").read_text()
    assert all(Path(note).name in index for note in (ROOT / "docs" / "notes").glob("2*.md"))
