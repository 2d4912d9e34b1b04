"""The command line answers --version, --help and a broken config file without importing torch or the theory
studies: each case runs in a fresh interpreter that reports which heavy modules it loaded (times are in
benchmarks/cli_startup.py, not here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "scipy", "matplotlib", "theory.studies", "theory.verdicts")

PROBE = """
import json, sys
from theory.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as stop:
    code = stop.code
print(json.dumps({{"code": code, "loaded": [m for m in {heavy!r} if m in sys.modules]}}), file=sys.stderr)
"""


def _probe(*argv: str, tmp_path) -> tuple[dict, str]:
    """(exit code and heavy modules loaded, everything printed) of ``gentransfer ARGV`` in a new interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(heavy=HEAVY), *argv],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report, done.stdout + done.stderr


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["run", "--help"]])
def test_version_and_help_load_no_heavy_module(argv: list[str], tmp_path) -> None:
    report, printed = _probe(*argv, tmp_path=tmp_path)
    assert report == {"code": 0, "loaded": []}, printed
    assert "gentransfer" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "no_such_config.toml", "--out", "out"], "no config file no_such_config.toml"),
        (["show", "smoke", "--set", "grid.n_t"], "must look like key.sub=value"),
        (["show", "bad.toml"], "is not valid TOML"),
        (["run", "kind.toml", "--out", "out"], "experiment.kind = 'nope' is not a study"),
    ],
)
def test_a_broken_config_is_reported_before_torch_loads(argv: list[str], message: str, tmp_path) -> None:
    (tmp_path / "bad.toml").write_text("[grid\n")
    (tmp_path / "kind.toml").write_text('[experiment]\nkind = "nope"\n')
    report, printed = _probe(*argv, tmp_path=tmp_path)
    assert report == {"code": 2, "loaded": []}, printed
    assert message in printed and "Traceback" not in printed
    assert not (tmp_path / "out").exists()
