"""The floors import only from below: shared_embed never sees flows, diffusion or theory."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"shared_embed": {"flows", "diffusion", "theory"}, "flows": {"diffusion", "theory"},
             "diffusion": {"flows", "theory"}}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(package):
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN[package], f"{path.relative_to(ROOT)} imports {name}"


def test_importing_the_ground_floor_loads_nothing_above_it():
    code = "import sys, shared_embed; print([m for m in ('flows', 'diffusion', 'theory') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
