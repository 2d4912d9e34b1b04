"""The teaching demos in ``examples/`` run end to end as notebooks, in their FAST mode, and print well-formed numbers.

Each demo (a jupytext percent script) is converted to a notebook and executed under nbclient in a fresh
ipykernel, as a lecturer would open it in Jupyter, with ``GENTRANSFER_DEMO_FAST=1``, one thread and a
temporary output folder. The test checks that every cell ran, parses the printed KL / MSE / slope lines to
finite numbers, that the figures show inline (image/png outputs) and are saved as non-trivial PNG files, and
that every saved figure is labelled (axes, a legend, the number it illustrates). In FAST mode the numbers are
meaningless, so only their form is checked.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)"
MIN_PNG_BYTES = 10_000  # a figure with axes, curves and text; an empty canvas is a few kB
FIGURES = "_figures_seen"
# test scaffolding run in the kernel around the demo: record what each saved figure shows
RECORD_FIGURES = f"""
import matplotlib.figure
{FIGURES} = []
_savefig = matplotlib.figure.Figure.savefig

def _recording_savefig(fig, *args, **kwargs):
    axes = [ax for ax in fig.axes if ax.has_data()]
    legends = [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + list(fig.legends)
    {FIGURES}.append({{
        "xlabels": [ax.get_xlabel() for ax in axes], "ylabels": [ax.get_ylabel() for ax in axes],
        "titles": [ax.get_title() for ax in axes] + [fig._suptitle.get_text() if fig._suptitle else ""],
        "legend_entries": [len(lg.get_texts()) for lg in legends],
        "legend_texts": [t.get_text() for lg in legends for t in lg.get_texts()],
    }})
    return _savefig(fig, *args, **kwargs)

matplotlib.figure.Figure.savefig = _recording_savefig
"""


def run_notebook(name: str, out: Path, monkeypatch: pytest.MonkeyPatch, quiet: str = "1") -> dict:
    """Execute examples/NAME as a notebook; its stdout, stderr, inline PNG count and recorded figures."""
    for key, value in {
        "GENTRANSFER_DEMO_FAST": "1",
        "GENTRANSFER_DEMO_OUT": str(out),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "GENTRANSFER_QUIET": quiet,
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own inline backend, as in Jupyter
    nb = jupytext.read(EXAMPLES / name)
    nb.cells.insert(0, nbformat.v4.new_code_cell(RECORD_FIGURES))
    nb.cells.append(nbformat.v4.new_code_cell(f"import json; print('FIGURES=' + json.dumps({FIGURES}))"))
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(EXAMPLES)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    stdout = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stdout")
    stderr = "".join(o.get("text", "") for o in outputs if o.output_type == "stream" and o.name == "stderr")
    images = sum("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")
    figures = json.loads(stdout.split("FIGURES=")[-1])
    return {"stdout": stdout, "stderr": stderr, "images": images, "figures": figures}


def check_figures_are_labelled(figures: list[dict], count: int) -> None:
    """Each saved figure: labelled axes, a legend of at most 6 entries, the number it illustrates in a title
    or the legend (a KL, MSE, MMD or slope with its value)."""
    assert len(figures) == count, figures
    number = re.compile(r"(KL|MSE|MMD|slope)[^0-9\n]{0,20}[-+]?\d")
    for fig in figures:
        assert any(fig["xlabels"]) and any(fig["ylabels"]), fig
        assert fig["legend_entries"] and max(fig["legend_entries"]) <= 6, fig
        assert any(number.search(t) for t in fig["titles"] + fig["legend_texts"]), fig


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
    """The demos leave the backend and the figures to the front end: Jupyter shows them inline."""
    for path in sorted(EXAMPLES.glob("*.py")):
        text = path.read_text()
        assert "# %% [markdown]" in text and text.count("\n# %%\n") >= 3, f"{path.name}: not in the percent format"
        assert "GENTRANSFER_DEMO_FAST" in text and "GENTRANSFER_DEMO_OUT" in text, path.name
        assert "matplotlib.use(" not in text and "plt.close(" not in text, path.name


def test_flow_transfer_2d(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Also with GENTRANSFER_QUIET=0: the training shows its progress in the notebook, without a warning."""
    run = run_notebook("flow_transfer_2d.py", tmp_path, monkeypatch, quiet="0")
    stdout = run["stdout"]
    kl = {
        m.group(1): (finite(m.group(2)), finite(m.group(3)))
        for m in re.finditer(rf"^KL (\w+)\s+= {NUMBER} \+- {NUMBER} nats", stdout, re.M)
    }
    assert set(kl) == {"source_as_is", "no_transfer", "transfer"}, stdout
    assert all(se >= 0 for _, se in kl.values())
    check_pngs(tmp_path, ["flow_transfer_2d.png"])
    assert run["images"] == 1
    check_figures_are_labelled(run["figures"], 1)
    assert re.search(r"source: +\d+%\|.*it/s.*rows=800/200", run["stderr"]), run["stderr"][:500]  # the fit, its rows
    assert "IProgress" not in run["stderr"] and "Warning" not in run["stderr"], run["stderr"][:500]


def test_tgdp_two_gaussians(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_notebook("tgdp_two_gaussians.py", tmp_path, monkeypatch)
    stdout = run["stdout"]
    mse = re.findall(rf"^t = {NUMBER}: MSE log h = {NUMBER}, MSE up to a constant = {NUMBER}", stdout, re.M)
    assert len(mse) == 3, stdout
    assert all(finite(a) >= 0 and finite(b) >= 0 for _, a, b in mse)
    mmd = re.findall(rf"^(.+?)\s+MMD\^2 = {NUMBER}", stdout, re.M)
    kernel = re.findall(rf"\(kernel guidance: {NUMBER}; variance", stdout)
    assert len(kernel) == 3 and all(finite(v) >= 0 for v in kernel), stdout
    assert len(mmd) == 6, stdout
    for _, value in mmd:
        finite(value)
    kl = re.findall(rf"KL = {NUMBER} \+- {NUMBER} nats", stdout)
    assert len(kl) == 5, stdout
    tau = re.findall(rf"switch time chosen on the held-out rows: tau = {NUMBER}", stdout)
    assert len(tau) == 1 and 0 <= finite(tau[0]) <= 1, stdout
    for value, se in kl:
        finite(value), finite(se)
    check_pngs(tmp_path, ["tgdp_guidance.png", "tgdp_samples.png"])
    assert run["images"] == 2 and not run["stderr"], run["stderr"][:500]
    check_figures_are_labelled(run["figures"], 2)


def test_kl_rate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run_notebook("kl_rate.py", tmp_path, monkeypatch)
    stdout = run["stdout"]
    levels = re.findall(rf"n_t =\s+(\d+):\s+KL transfer = {NUMBER} \+- {NUMBER} .*KL no_transfer = {NUMBER}", stdout)
    assert len(levels) >= 3, stdout
    for _, *values in levels:
        for v in values:
            finite(v)
    slopes = {
        m.group(1): (finite(m.group(2)), finite(m.group(3)))
        for m in re.finditer(
            rf"^slope (\w+)\s+\(.*?\): measured exponent = {NUMBER}.*predicted = {NUMBER}", stdout, re.M
        )
    }
    assert set(slopes) == {"no_transfer", "transfer"}, stdout
    assert slopes["transfer"][1] == pytest.approx(1 / 3, abs=1e-3)  # generic template, flows: beta - 1 = 1, d = 4
    assert slopes["no_transfer"][1] == pytest.approx(0.1, abs=1e-3)  # d = 18
    check_pngs(tmp_path, ["kl_rate.png"])
    assert run["images"] == 1 and not run["stderr"], run["stderr"][:500]
    check_figures_are_labelled(run["figures"], 1)
