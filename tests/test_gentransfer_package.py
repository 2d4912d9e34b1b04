"""The ``gentransfer`` package: every re-exported name is the object its own package defines, the list covers
each package's public API, ``import gentransfer`` stays cheap, and (slow) the wheel and sdist carry it all."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

import gentransfer

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("gentransfer", "shared_embed", "flows", "diffusion", "theory")


@pytest.mark.parametrize("name", sorted(set(gentransfer.__all__) - {"__version__"}))
def test_each_name_is_the_object_its_package_defines(name: str) -> None:
    module = importlib.import_module(gentransfer._EXPORTS[name])
    assert getattr(gentransfer, name) is getattr(module, name)


@pytest.mark.parametrize("package", ["shared_embed", "flows", "diffusion", "diffusion.tgdp"])
def test_every_public_name_of_a_package_is_re_exported(package: str) -> None:
    public = set(importlib.import_module(package).__all__)
    assert public <= set(gentransfer.__all__), sorted(public - set(gentransfer.__all__))


def test_the_brief_import_line_works() -> None:
    from gentransfer import (  # noqa: F401
        ConditionalModel,
        DiffusionHead,
        Encoder,
        FlowHead,
        PairedData,
        TrainConfig,
        fit_source,
        fit_target_head,
    )

    assert FlowHead.__module__ == "flows.head" and gentransfer.__version__


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'FlowHeed'"):
        gentransfer.FlowHeed  # noqa: B018
    assert "FlowHead" in dir(gentransfer)


def test_import_gentransfer_loads_none_of_the_packages() -> None:
    code = (
        "import sys, json, gentransfer; print(json.dumps([m for m in ('torch', 'shared_embed', 'flows', "
        "'diffusion', 'theory') if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_is_marked_typed(package: str) -> None:
    assert (ROOT / package / "py.typed").is_file()


# -- the built distributions (slow: a build and a fresh virtual environment) -----------------------------------
def _source_copy(dest: Path) -> Path:
    """What a release builds from, copied so that the build leaves the working tree untouched."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in"):
        shutil.copy(ROOT / name, dest / name)
    for name in (*PACKAGES, "configs", "examples", "docs"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "output"))
    return dest


def _build(source: Path, out: Path, kind: str) -> Path:
    """Build a wheel or an sdist with setuptools' PEP 517 hooks (no network, no build isolation)."""
    code = f"from setuptools import build_meta as b; print(b.build_{kind}({os.fspath(out)!r}))"
    name = subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    return out / name


@pytest.mark.slow
def test_the_wheel_imports_in_a_fresh_environment(tmp_path: Path) -> None:
    wheel = _build(_source_copy(tmp_path / "source"), tmp_path / "dist", "wheel")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert {f"{p}/py.typed" for p in PACKAGES} <= names and "gentransfer/__init__.py" in names
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: MIT" in text
    env = tmp_path / "env"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel], check=True)
    done = subprocess.run(
        [python, "-c", "import gentransfer, sys; print(gentransfer.__version__)"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "0.1.0"
    # with the dependencies of this environment on the path (a .pth file: the wheel's own packages come first)
    site = next((env / "lib").glob("python3*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "deps.pth").write_text(f"{deps}\n")
    code = "from gentransfer import FlowHead, DiffusionHead, fit_source; import flows; print(flows.__file__)"
    done = subprocess.run([python, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert Path(done.stdout.strip()).is_relative_to(site)


@pytest.mark.slow
def test_the_sdist_carries_the_examples_and_the_docs(tmp_path: Path) -> None:
    sdist = _build(_source_copy(tmp_path / "source"), tmp_path / "dist", "sdist")
    with tarfile.open(sdist) as tf:
        names = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    for folder in ("examples", "docs"):
        shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).glob("*") if p.is_file()}
        assert shipped and shipped <= names, sorted(shipped - names)
    assert {"LICENSE", "gentransfer/__init__.py", "gentransfer/py.typed"} <= names
