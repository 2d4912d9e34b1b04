"""README's library example runs as printed (with fewer steps and draws) and uses the transfer call it teaches."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_library_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A library example") :]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "fit_target_head(src, FlowHead(2, 2), target" in code and "c_scaler" not in code
    fast = (
        code.replace("10_000", "1_000")
        .replace("steps=2000", "steps=40")
        .replace("steps=1000", "steps=20")
        .replace("n=5000", "n=300")
    )
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(fast, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert re.match(r"[-\d.]+ \+- [\d.]+ nats \(n=300\)", lines[0]), lines
    assert lines[1] == "torch.Size([5, 3]) torch.Size([5, 2])", lines
