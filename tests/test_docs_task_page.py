"""docs/bring_your_own_task.md runs as printed (fewer seeds and steps): its task module, saved in a folder outside
the package, runs through ``gentransfer run`` and ``gentransfer report --task`` as the page's shell block says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "bring_your_own_task.md"


def _blocks() -> dict[str, str]:
    found = re.findall(r"```(\w+)\n(.*?)```", PAGE.read_text(), re.S)
    assert [lang for lang, _ in found] == ["python", "toml", "bash"], "the page holds one block of each, in order"
    return dict(found)


def test_the_bring_your_own_task_page_runs(tmp_path: Path) -> None:
    blocks = _blocks()
    (tmp_path / "my_tasks.py").write_text(blocks["python"])
    fast = (
        blocks["toml"]
        .replace("seeds = [0, 1, 2]", "seeds = [0, 1]")
        .replace("steps = 800", "steps = 200")
        .replace("steps = 400", "steps = 100")
        .replace("n_t = [25, 100]", "n_t = [25]")
        .replace("n_eval = 1000", "n_eval = 300")
    )
    assert fast != blocks["toml"]
    (tmp_path / "my_task.toml").write_text(fast)
    scripts = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}", "GENTRANSFER_QUIET": "1"}
    for line in blocks["bash"].strip().splitlines():
        done = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    report = (tmp_path / "runs/laplace/report.md").read_text()
    assert "my_tasks:LaplaceTask" in report and "| 25 |" in report
    assert (tmp_path / "runs/laplace/plots/samples_flow.png").is_file()


def test_the_read_results_page_runs(capsys) -> None:
    code = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "read_results.md").read_text(), re.S).group(1)
    exec(compile(code, "docs/read_results.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"\d+ cells; \['no_transfer', 'oracle', 'transfer'\]", printed[-2]), printed
    assert re.fullmatch(r"lowest KL: \w+ at n_t = \d+: [\d.]+ \+- [\d.]+ nats", printed[-1]), printed
