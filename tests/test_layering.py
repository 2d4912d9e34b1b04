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


def _module_imports(path: pathlib.Path) -> set[str]:
    """The theory modules ``path`` imports at module level (outside functions and TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n.startswith("theory") and (ROOT / (n.replace(".", "/") + ".py")).exists()}
    return found


def test_theory_has_no_import_circles():
    graph = {".".join(p.relative_to(ROOT).with_suffix("").parts): _module_imports(p)
             for p in (ROOT / "theory").rglob("*.py")}
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for dep in graph.get(module, ()):
            assert state.get(dep) != 1, f"import circle: {' -> '.join(path + [dep])}"
            if dep not in state:
                visit(dep, path + [dep])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])


def test_one_engine_runs_every_grid():
    """Only theory/engine.py starts worker processes; it imports no other theory module (the floor of the
    experiment machinery), and every study runs its cells through it."""
    engine = ROOT / "theory" / "engine.py"
    assert _module_imports(engine) == set()
    for path in (ROOT / "theory").rglob("*.py"):
        if path != engine:
            assert "ProcessPoolExecutor" not in path.read_text(), path
    for study in ("sweep.py", "transfer_experiment.py", "tgdp_experiment.py", "real/digits_experiment.py"):
        text = (ROOT / "theory" / study).read_text()
        assert "run_groups(" in text and "run_cells(" in text, study
