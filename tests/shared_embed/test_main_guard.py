"""A script that starts worker processes outside ``if __name__ == "__main__":`` ends with one line saying what to add,
not with spawn tracebacks and BrokenProcessPool; guarded scripts, and calls from functions, pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "user_script.py"
    script.write_text(text)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GENTRANSFER_QUIET": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )


def test_unguarded_sweep_with_workers_fails_in_one_line(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        "from theory.engine.config import load_config\n"
        "from theory.studies.transfer.sweep import run_sweep\n"
        "\n"
        f"config = load_config({str(ROOT / 'configs' / 'smoke.toml')!r})\n"
        "run_sweep(config, 'run', workers=2)\n",
    )
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, out.stderr
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("user_script.py, line 5: starting 2 worker processes"), lines
    assert 'if __name__ == "__main__":' in lines[0]
    assert "BrokenProcessPool" not in out.stderr + out.stdout and "Traceback" not in out.stderr


def test_guarded_calls_and_calls_from_functions_pass(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        "from shared_embed.main_guard import check_main_guard\n"
        "\n"
        "def main():\n"
        "    check_main_guard('workers')\n"
        "\n"
        "if __name__ == '__main__':\n"
        "    main()\n"
        "    check_main_guard('workers')\n"
        "    print('ok')\n",
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_a_call_after_the_guard_block_is_caught(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        "from shared_embed.main_guard import check_main_guard\n"
        "if '__main__' == __name__:\n"
        "    print('guarded')\n"
        "check_main_guard('3 worker processes')\n",
    )
    assert out.returncode == 1 and out.stdout.strip() == "guarded", out.stderr
    assert out.stderr.strip().splitlines() == [
        "user_script.py, line 4: starting 3 worker processes from the script's top level; put the script's calls "
        'under `if __name__ == "__main__":` (spawned workers import the script again and would run them again)'
    ]


def test_the_error_is_a_catchable_gentransfer_error(tmp_path: Path) -> None:
    out = run_script(
        tmp_path,
        "from shared_embed.errors import GentransferError\n"
        "from shared_embed.main_guard import check_main_guard\n"
        "try:\n"
        "    check_main_guard('workers')\n"
        "except GentransferError as err:\n"
        "    print('caught:', type(err).__name__)\n",
    )
    assert out.returncode == 0 and out.stdout.strip() == "caught: MainGuardError", out.stderr
