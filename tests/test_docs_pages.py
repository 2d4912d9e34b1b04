"""The docs pages run as printed: every ```python block of docs/bring_your_own_data.md and docs/callbacks.md, in
order, in one namespace, and what they print has the form (and, where the page states it, the value) the page says.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.doc_code import python_blocks, run_blocks

DOCS = Path(__file__).resolve().parents[1] / "docs"
NUMBER = r"[-+]?\d+\.\d+"


@pytest.fixture(autouse=True)
def quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENTRANSFER_QUIET", "1")


def run_page(name: str) -> list[str]:
    blocks = python_blocks((DOCS / name).read_text())
    assert len(blocks) >= 3, f"{name} has {len(blocks)} python blocks"
    start = time.perf_counter()
    lines = run_blocks(blocks, name)
    assert time.perf_counter() - start < 60, "the page's code must stay quick (small step counts)"
    return lines


def test_bring_your_own_data_page_runs() -> None:
    lines = run_page("bring_your_own_data.md")
    assert lines[0] == "torch.float32 (40, 28) (40, 2)", lines
    assert re.fullmatch(r"source fit: \d+ steps.*; 286 rows trained, 71 held out for validation", lines[1]), lines
    assert re.fullmatch(r"target fit: \d+ steps.*; 32 rows trained, 8 held out for validation", lines[2]), lines
    assert re.fullmatch(rf"held-out NLL of the transferred model: {NUMBER} nats per tumour; draws \(5, 2\)", lines[3])
    rows = "{'source': {'train': 286, 'val': 71}}"
    assert re.fullmatch(rf"source +held-out NLL +{NUMBER} +rows {re.escape(rows)}", lines[4]), lines
    for variant, phase in (("transfer", "target"), ("no_transfer", "target")):
        line = next(x for x in lines if x.startswith(f"{variant} "))
        assert line.endswith(f"rows {{'{phase}': {{'train': 32, 'val': 8}}}}"), line
    assert "569 569 569 torch.float32" in lines, lines
    page = (DOCS / "bring_your_own_data.md").read_text()
    printed_errors = page[page.rindex("```text") :].split("\n")[1:4]
    assert lines[-3:] == printed_errors, (lines[-3:], printed_errors)


def test_callbacks_page_runs() -> None:
    lines = run_page("callbacks.md")
    assert lines[0].startswith("['source', 'target'] ['events']"), lines
    assert lines[1:3] == ["val curve as in the history: True", "one train loss per step: True"], lines
    evals = [x for x in lines if re.fullmatch(rf"target step +\d+: validation loss {NUMBER}", x)]
    assert evals and lines[-1] == f"{len(evals)} evaluations", lines
    assert re.fullmatch(r"target: \d+ steps.*; 80 rows trained, 20 held out for validation", lines[-2]), lines
