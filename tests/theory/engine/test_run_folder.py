"""Run folders you can trust: one study per folder, reports that run no code a folder names, workers that die
with their parent, failures that are retried and said, no silent wrong results, one-line CLI errors, group-
readable files and a progress line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared_embed.checkpoint import atomic_write_text
from shared_embed.errors import ConfigError, DataError
from theory.cli import main
from theory.engine.config import ExperimentConfig
from theory.studies.transfer.report import build_report
from theory.studies.transfer.sweep import collect_records, run_sweep

ROOT = Path(__file__).resolve().parents[3]


def raw(**grid: object) -> dict:
    g = {"n_s": [64], "n_t": [8], "seeds": [0], "heads": ["gaussian"], "variants": ["transfer", "no_transfer"], **grid}
    return {
        "grid": g,
        "encoder": {"hidden": [8]},
        "train": {p: {"steps": 15, "eval_every": 5} for p in ("source", "target", "floor")},
        "evaluation": {"n_eval": 200, "floor_n": 100, "sample_n": 0},
    }


def tiny(**grid: object) -> ExperimentConfig:
    return ExperimentConfig.from_dict(raw(**grid))


def kls(out: Path) -> dict:
    return {(r["variant"], r["n_t"], r["seed"]): (r["status"], r.get("kl")) for r in collect_records(out)}


def files(out: Path) -> dict[str, float]:
    """Every file of a folder but its lock files (which a refused run stamps), by its modification time."""
    return {str(p): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}


# 1 -------------------------------------------------------------------------------------------------------
def test_a_folder_belongs_to_one_study_and_another_is_refused_before_any_compute(tmp_path: Path) -> None:
    run_sweep(tiny(), tmp_path, log=None)
    before = files(tmp_path)
    other = ExperimentConfig.from_dict({**raw(), "task": {"name": "conditional_gaussian", "d_c": 5}})
    with pytest.raises(ConfigError, match="another study.*task"):
        run_sweep(other, tmp_path, log=None)
    assert files(tmp_path) == before  # nothing computed, nothing cached overwritten
    grown = run_sweep(tiny(n_t=[8, 16], seeds=[0, 1]), tmp_path, log=None)  # the same study, a bigger grid
    assert (grown.ran, grown.skipped) == (6, 2)


# 2 -------------------------------------------------------------------------------------------------------
def test_report_never_imports_code_named_by_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "planted_rate.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from theory.truth.rates import generic_rates as rates\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    run_sweep(ExperimentConfig.from_dict({**raw(), "theory": {"rate": "planted_rate:rates"}}), out, log=None)
    assert marker.exists()  # the user ran a config naming it: imported then, its predictions stored
    marker.unlink()
    sys.modules.pop("planted_rate", None)
    report = build_report(out)  # from the folder alone: the stored predictions, no import
    assert not marker.exists() and report.checks
    (out / "predictions.json").unlink()
    with pytest.raises(ConfigError, match="never imports code.*--rate planted_rate:rates"):
        build_report(out)
    assert not marker.exists()
    build_report(out, rate="planted_rate:rates")  # named by the user on the command line: imported
    assert marker.exists()


def test_a_rate_function_that_cannot_run_fails_before_any_compute(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text((ROOT / "configs" / "smoke.toml").read_text())
    assert main(["run", str(config), "--out", str(tmp_path / "o"), "--set", "theory.rate=os:system"]) == 2
    assert "rate function 'os:system' failed" in capsys.readouterr().err
    assert not (tmp_path / "o" / "cells").exists()


# 3 -------------------------------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's reaping is left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_die_with_their_parent_and_the_rerun_gives_identical_records(tmp_path: Path) -> None:
    cfg = raw(seeds=[0, 1, 2, 3], variants=["no_transfer"], n_t=[8, 16])
    cfg["train"]["target"] = {"steps": 400, "eval_every": 50}
    (tmp_path / "c.toml").write_text(
        "\n".join(
            [
                "[grid]\nn_s = [64]\nn_t = [8, 16]\nseeds = [0, 1, 2, 3]\nheads = ['gaussian']\nvariants = ['no_transfer']",
                "[encoder]\nhidden = [8]",
                "[train.target]\nsteps = 400\neval_every = 50",
                "[train.source]\nsteps = 15\neval_every = 5",
                "[train.floor]\nsteps = 15\neval_every = 5",
                "[evaluation]\nn_eval = 200\nfloor_n = 100\nsample_n = 0",
            ]
        )
    )
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "theory",
            "run",
            str(tmp_path / "c.toml"),
            "--out",
            str(out),
            "--workers",
            "2",
            "--quiet",
            "--no-report",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    workers: list[int] = []
    while time.monotonic() < deadline and len(workers) < 2:
        time.sleep(0.2)
        workers = [p for p in _children(parent.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2 and parent.poll() is None, "the run ended before its workers were seen"
    children = _children(parent.pid)
    time.sleep(1.0)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline and any(map(_alive, children)):
        time.sleep(0.2)
    assert not any(map(_alive, children)), "workers outlived their parent"
    run_sweep(ExperimentConfig.from_dict(cfg), out, log=None)
    run_sweep(ExperimentConfig.from_dict(cfg), tmp_path / "whole", log=None)
    assert kls(out) == kls(tmp_path / "whole")


# 4 -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "head",
    [
        {"kind": "gaussian", "options": {"activation": "sigmoidish"}},
        {"kind": "flow", "options": {"backend": "tensorflow"}},
        {"kind": "flow", "options": {"bins": -3}},
        {"kind": "flow", "options": {"transform": "magic"}},
    ],
)
def test_bad_option_values_are_refused_before_any_cell_runs(tmp_path: Path, head: dict) -> None:
    bad = ExperimentConfig.from_dict({**raw(heads=["x"]), "heads": {"x": head}})
    with pytest.raises(ConfigError, match=r"heads\.x"):
        run_sweep(bad, tmp_path, log=None)
    assert not (tmp_path / "cells").exists()


def test_failed_cells_make_the_run_exit_non_zero_and_say_which(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text((ROOT / "configs" / "smoke.toml").read_text())
    args = [
        "run",
        str(config),
        "--out",
        str(tmp_path / "o"),
        "--quiet",
        "--no-report",
        "--set",
        "grid.seeds=[0]",
        "--set",
        "grid.n_t=[20]",
        "--set",
        "grid.n_s=[200]",
        "--set",
        "train.target.lr=1e30",
        "--set",
        "train.target.grad_clip=1e30",
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "cell(s) failed" in err and "no_transfer" in err and "run the same command again" in err


def test_a_corrupted_cached_model_is_rebuilt(tmp_path: Path) -> None:
    run_sweep(tiny(variants=["transfer"]), tmp_path, log=None)
    first = kls(tmp_path)
    source = next(tmp_path.glob("models/**/*_source.safetensors"))
    source.write_bytes(source.read_bytes()[:100])
    for record in tmp_path.glob("cells/**/*.json"):
        record.unlink()
    again = run_sweep(tiny(variants=["transfer"]), tmp_path, log=None)
    assert again.failed == 0 and kls(tmp_path) == first


# 5 -------------------------------------------------------------------------------------------------------
def test_a_truncated_record_is_an_error_for_the_report_and_recomputed_by_a_run(tmp_path: Path) -> None:
    run_sweep(tiny(), tmp_path, log=None)
    first = kls(tmp_path)
    record = next(tmp_path.glob("cells/**/*no_transfer.json"))
    record.write_bytes(record.read_bytes()[:40])
    with pytest.raises(DataError, match="not a readable cell record"):
        build_report(tmp_path)
    assert run_sweep(tiny(), tmp_path, log=None).ran == 1 and kls(tmp_path) == first


def test_a_non_finite_kl_is_a_failed_cell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import theory.studies.transfer.sweep as sweep
    from theory.truth.kl import KLEstimate

    monkeypatch.setattr(sweep, "monte_carlo_kl", lambda p, q: KLEstimate(float("nan"), float("nan"), 1))
    result = run_sweep(tiny(variants=["no_transfer"]), tmp_path, log=None)
    assert result.failed == 1 and "KL estimate is nan" in result.failures[0]


@pytest.mark.parametrize("n_t, match", [([2, 3], r"at least d_h \+ d_x \+ 2"), ([10**10], r"grid.n_t\[0\].*<=")])
def test_sample_sizes_a_cell_cannot_use_are_refused(tmp_path: Path, n_t: list[int], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        run_sweep(tiny(n_t=n_t), tmp_path, log=None)
    assert not (tmp_path / "cells").exists()


def test_a_target_fit_that_never_beats_its_initial_model_is_flagged(tmp_path: Path) -> None:
    cfg = ExperimentConfig.from_dict(
        {
            **raw(heads=["flow"], variants=["no_transfer"], n_t=[40]),
            "heads": {"flow": {"kind": "flow", "options": {"transforms": 1, "hidden": [8]}}},
            "train": {"target": {"steps": 30, "eval_every": 10, "lr": 1e6}},
        }
    )
    result = run_sweep(cfg, tmp_path, log=None)
    assert result.failed == 0 and "never beat its initial model" in result.flagged[0]
    assert "## Flagged cells" in build_report(tmp_path).path.read_text()


# 6 -------------------------------------------------------------------------------------------------------
def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and needle in err, err


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    smoke = str(ROOT / "configs" / "smoke.toml")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _one_line_error(capsys, ["run", smoke, "--out", str(a_file)], "not a folder")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(bytes(range(256)))
    _one_line_error(capsys, ["run", str(binary), "--out", str(tmp_path / "o")], "not UTF-8")
    utf16 = tmp_path / "utf16.toml"
    utf16.write_text((ROOT / "configs" / "smoke.toml").read_text(), encoding="utf-16")
    _one_line_error(capsys, ["run", str(utf16), "--out", str(tmp_path / "o")], "utf16.toml")
    (tmp_path / "folder.toml").mkdir()
    _one_line_error(capsys, ["run", str(tmp_path / "folder.toml"), "--out", str(tmp_path / "o")], "is a folder")
    run_sweep(tiny(), tmp_path / "run", log=None)
    next((tmp_path / "run").glob("cells/**/*.json")).write_bytes(b"\x00\xff\xfe binary")
    _one_line_error(capsys, ["report", str(tmp_path / "run")], "not a readable cell record")


@contextlib.contextmanager
def _read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder this process cannot write into: mode 0500 for a user; for root (whom modes do not stop), a
    read-only tmpfs mounted there (skipped where root may not mount)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o500)
        try:
            yield ro
        finally:
            ro.chmod(0o700)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("running as root where no read-only file system can be mounted: no folder is read-only here")
    try:
        yield ro
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_a_read_only_out_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with _read_only_folder(tmp_path) as ro:
        _one_line_error(capsys, ["run", str(ROOT / "configs" / "smoke.toml"), "--out", str(ro)], "not writable")
        _one_line_error(
            capsys, ["run", str(ROOT / "configs" / "smoke.toml"), "--out", str(ro / "run")], "cannot be created"
        )


def test_digits_runner_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "digits"
    out.mkdir()
    (out / "config.json").write_text('{"experiment": {"kind": "digits"}, "digits": {"styel": "invert"}}')
    _one_line_error(capsys, ["report", str(out)], "unknown key 'digits.styel'")
    (out / "config.json").write_text("{not json")
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err


# 7 -------------------------------------------------------------------------------------------------------
def test_files_honour_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
        run_sweep(tiny(variants=["transfer"]), tmp_path / "run", log=None)
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    modes = {p.stat().st_mode & 0o777 for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert modes == {0o640}


# 8 -------------------------------------------------------------------------------------------------------
def test_a_run_prints_cells_done_of_total_and_the_time_left(tmp_path: Path) -> None:
    lines: list[str] = []
    run_sweep(tiny(n_t=[8, 16]), tmp_path, log=lines.append)
    progress = [m for m in lines if m.startswith("progress:")]
    assert [m.split()[1] for m in progress] == ["1/4", "2/4", "3/4", "4/4"]
    assert all("left" in m for m in progress)


# the library: a score that goes non-finite says which, and when -------------------------------------------
@pytest.mark.parametrize("call", ["sde", "ode", "log_prob"])
def test_non_finite_scores_name_the_score_and_the_time(call: str) -> None:
    from diffusion.likelihood import probability_flow_log_prob
    from diffusion.sampling import sample_ode, sample_sde
    from diffusion.schedule import VPSchedule

    def broken_score(x: torch.Tensor, t: torch.Tensor, c: object) -> torch.Tensor:
        return x * float("nan")

    x, schedule = torch.randn(5, 2), VPSchedule()
    run = {
        "sde": lambda: sample_sde(broken_score, x, schedule, steps=5),
        "ode": lambda: sample_ode(broken_score, x, schedule),
        "log_prob": lambda: probability_flow_log_prob(broken_score, x, schedule),
    }[call]
    with pytest.raises(DataError, match=r"broken_score is not finite.*at t = "):
        run()
