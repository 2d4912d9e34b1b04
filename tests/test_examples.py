"""The teaching demos in ``examples/`` run end to end in their FAST mode and print well-formed numbers.

Each demo runs as a subprocess (as a lecturer would run it) with ``GENTRANSFER_DEMO_FAST=1``, one thread and a
temporary output folder; the test checks the exit code, parses the printed KL / MSE / slope lines to finite
numbers and checks that the PNG pictures exist and are not trivial. In FAST mode the numbers are meaningless, so
only their form is checked. The three together take about 15-20 s on one core.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
MIN_PNG_BYTES = 10_000  # a figure with axes, curves and text; an empty canvas is a few kB


def run_demo(name: str, out: Path) -> str:
    env = {**os.environ, "GENTRANSFER_DEMO_FAST": "1", "GENTRANSFER_DEMO_OUT": str(out), "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "GENTRANSFER_QUIET": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / name)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{name} failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def finite(text: str) -> float:
    value = float(text)
    assert math.isfinite(value), f"not finite: {text}"
    return value


def check_pngs(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        assert path.is_file(), f"missing picture {path}"
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
        assert len(data) > MIN_PNG_BYTES, f"{path} is only {len(data)} bytes"


def test_examples_are_jupytext_percent_scripts() -> None:
    for path in sorted(EXAMPLES.glob("*.py")):
        text = path.read_text()
        assert "# %% [markdown]" in text and text.count("\n# %%\n") >= 3, f"{path.name}: not in the percent format"
        assert "GENTRANSFER_DEMO_FAST" in text and "GENTRANSFER_DEMO_OUT" in text, path.name


def test_flow_transfer_2d(tmp_path: Path) -> None:
    stdout = run_demo("flow_transfer_2d.py", tmp_path)
    kl = {m.group(1): (finite(m.group(2)), finite(m.group(3)))
          for m in re.finditer(rf"^KL (\w+)\s+= {NUMBER} \+- {NUMBER} nats", stdout, re.M)}
    assert set(kl) == {"source_as_is", "no_transfer", "transfer"}, stdout
    assert all(se >= 0 for _, se in kl.values())
    check_pngs(tmp_path, ["flow_transfer_2d.png"])


def test_tgdp_two_gaussians(tmp_path: Path) -> None:
    stdout = run_demo("tgdp_two_gaussians.py", tmp_path)
    mse = re.findall(rf"^t = {NUMBER}: MSE log h = {NUMBER}, MSE up to a constant = {NUMBER}", stdout, re.M)
    assert len(mse) == 3, stdout
    assert all(finite(a) >= 0 and finite(b) >= 0 for _, a, b in mse)
    mmd = re.findall(rf"^(.+?)\s+MMD\^2 = {NUMBER}", stdout, re.M)
    assert len(mmd) == 4, stdout
    for _, value in mmd:
        finite(value)
    kl = re.findall(rf"KL = {NUMBER} \+- {NUMBER} nats", stdout)
    assert len(kl) == 3, stdout
    for value, se in kl:
        finite(value), finite(se)
    check_pngs(tmp_path, ["tgdp_guidance.png", "tgdp_samples.png"])


def test_kl_rate(tmp_path: Path) -> None:
    stdout = run_demo("kl_rate.py", tmp_path)
    levels = re.findall(rf"n_t =\s+(\d+):\s+KL transfer = {NUMBER} \+- {NUMBER} .*KL no_transfer = {NUMBER}", stdout)
    assert len(levels) >= 3, stdout
    for _, *values in levels:
        for v in values:
            finite(v)
    slopes = {m.group(1): (finite(m.group(2)), finite(m.group(3))) for m in re.finditer(
        rf"^slope (\w+)\s+\(.*?\): measured exponent = {NUMBER}.*predicted = {NUMBER}", stdout, re.M)}
    assert set(slopes) == {"no_transfer", "transfer"}, stdout
    assert slopes["transfer"][1] == pytest.approx(1 / 3, abs=1e-3)  # generic template, flows: beta - 1 = 1, d = 4
    assert slopes["no_transfer"][1] == pytest.approx(0.1, abs=1e-3)  # d = 18
    check_pngs(tmp_path, ["kl_rate.png"])
