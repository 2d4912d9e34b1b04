"""The floors import only from below: shared_embed never sees flows, diffusion or theory."""

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "shared_embed": {"flows", "diffusion", "theory"},
    "flows": {"diffusion", "theory"},
    "diffusion": {"flows", "theory"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_upward_or_sideways_imports(package):
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            )
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
    """Not at module level, nor through imports deferred into functions or TYPE_CHECKING blocks: every
    dependency of a theory module points one way."""
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "theory").rglob("*.py")
    }
    graph = {m: {n for n in _all_theory_imports(p) if n in modules and n != m} for m, p in modules.items()}
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


THEORY_FLOORS = {  # a part of theory/ may import the parts listed (and itself), nothing else of theory/
    "theory.truth": set(),
    "theory.verdicts": {"theory.truth"},
    "theory.engine": {"theory.truth", "theory.verdicts"},
    "theory.studies.transfer": {"theory.truth", "theory.verdicts", "theory.engine"},
    "theory.studies.tgdp": {"theory.truth", "theory.verdicts", "theory.engine"},
    "theory.studies.digits": {"theory.truth", "theory.verdicts", "theory.engine"},
    "theory.studies.completion": {"theory.truth", "theory.verdicts", "theory.engine"},
}


def _part_of(module: str) -> str | None:
    return next(
        (
            part
            for part in sorted(THEORY_FLOORS, key=len, reverse=True)
            if module == part or module.startswith(part + ".")
        ),
        None,
    )


def _all_theory_imports(path: pathlib.Path) -> set[str]:
    """Every theory module ``path`` imports, at any depth (inside functions and TYPE_CHECKING blocks too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {n for n in found if n.startswith("theory")}


def test_theory_is_split_into_floors():
    """theory/ is the ground truth, then verdicts, then the engine, then the studies (which never import each
    other), and the command line on top; every module lives in one of these parts and imports only below it."""
    loose = [p.name for p in (ROOT / "theory").glob("*.py")]
    assert sorted(loose) == ["__init__.py", "__main__.py", "cli.py"], loose
    for path in (ROOT / "theory").rglob("*.py"):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        part = _part_of(module)
        if part is None:
            continue
        for name in _all_theory_imports(path):
            target = _part_of(name)
            if target is None:
                assert name in ("theory", "theory.studies"), f"{module} imports {name}"
                continue
            assert target == part or target in THEORY_FLOORS[part], f"{module} ({part}) imports {name} ({target})"


def test_no_relative_imports_in_theory():
    """Absolute imports only: a module's imports read the same wherever it lives."""
    for path in (ROOT / "theory").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path.relative_to(ROOT)} imports relatively"


def test_one_engine_runs_every_grid():
    """Only theory/engine/loop.py starts worker processes; it imports no other theory module (the floor of the
    experiment machinery), and every study runs its cells through it (the cell studies through the engine's
    record_cells, which runs them with run_cells and writes their records)."""
    engine = ROOT / "theory" / "engine" / "loop.py"
    assert _module_imports(engine) == set()
    for path in (ROOT / "theory").rglob("*.py"):
        if path != engine:
            assert "ProcessPoolExecutor" not in path.read_text(), path
    for study in ("transfer/sweep.py", "tgdp/experiment.py", "digits/experiment.py", "completion/experiment.py"):
        text = (ROOT / "theory" / "studies" / study).read_text()
        assert "run_groups(" in text and ("run_cells(" in text or "record_cells(" in text), study
