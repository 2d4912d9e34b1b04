"""The TGDP simulation experiment: a tiny end-to-end run (records, table, plots), and the full grid (``-m slow``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tests.presets import preset_args, preset_settings
from theory.studies.tgdp.experiment import TGDPSettings, compare, load_records, run_tgdp_experiment
from theory.studies.tgdp.settings import LEARNED, METHODS, SWITCH_LOW


def test_tiny_tgdp_experiment_end_to_end(tmp_path: Path) -> None:
    result = run_tgdp_experiment(preset_settings("tgdp_simulation"), out_dir=tmp_path)
    records = result["records"]
    assert len(records) == 2 * len(METHODS)  # one seed, one n_t, two versions
    assert {(r["conditional"], r["method"]) for r in records} == {(c, m) for c in (False, True) for m in METHODS}
    for r in records:
        assert math.isfinite(r["kl"]) and r["kl_se"] >= 0 and r["n_eval"] == 200, r["method"]
        assert math.isfinite(r["mmd2"]) and r["mmd_bandwidth"] > 0
        assert len(r["samples"]) == 50
        assert set(r["score_mse_q"]) == {"0.1", "0.5"} and r["score_mse_q_mean"] >= 0
        if r["method"] in ("tgdp", "tgdp_reg", "tgdp_exact_w"):
            assert set(r["log_h_mse"]) == {"0.1", "0.5"}
            assert all(math.isfinite(v) and v >= 0 for v in r["log_h_mse"].values())
            assert r["log_h_mse_mean"] >= 0 and r["grad_mse_q_mean"] >= 0
        if r["method"] in ("tgdp", "tgdp_reg", "tgdp_kernel"):
            assert r["ratio_mse"] >= 0
        if r["method"] in ("tgdp_kernel", "tgdp_noisy_clf"):
            assert r["log_h_mse_q_mean"] >= 0
        if r["method"] in SWITCH_LOW:  # the switch chosen among the candidates, each with its held-out loss
            assert r["settings"]["low"] == SWITCH_LOW[r["method"]]
            assert str(r["settings"]["switch"]) in r["settings"]["switch_losses"]
            assert all(math.isfinite(v) for v in r["settings"]["switch_losses"].values())
        if r["conditional"]:
            assert r["label_kl"] >= 0 and len(r["label_probs"]) == 2
    reg = next(r for r in records if r["method"] == "tgdp_reg")
    assert reg["settings"] == {"eta_cycle": 1.0, "eta_consistency": 1.0}
    # the records on disk are the records returned, one file per (seed, n_t, conditional, method)
    on_disk = load_records(tmp_path)
    assert len(on_disk) == len(records)
    assert json.loads((tmp_path / "settings.json").read_text())["n_source"] == 400
    table = (tmp_path / "table.md").read_text()
    assert table.strip() == result["table"]
    for m in METHODS:
        assert f"| {m}" in table
    assert "| uncond | 10 |" in table and "| cond | 10 |" in table
    assert len(result["plots"]) == 4
    for p in result["plots"]:
        assert Path(p).exists() and Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Path(p).stat().st_size > 5000
    gap = compare(result["summary"], "tgdp", "target_only", 10, False)
    assert math.isfinite(gap["gap"]) and gap["se"] >= 0


def test_score_errors_vanish_for_the_exact_target_score_only() -> None:
    from diffusion.schedule import VPSchedule
    from theory.studies.tgdp.evaluation import score_errors
    from theory.truth.tasks import TwoGaussianTask

    task, sch = TwoGaussianTask(), VPSchedule()
    for conditional in (False, True):
        exact = score_errors(
            task,
            task.score_fn("target", sch, conditional),
            sch,
            (0.05, 0.5),
            300,
            conditional,
            torch.Generator().manual_seed(0),
        )
        wrong = score_errors(
            task,
            task.score_fn("source", sch, conditional),
            sch,
            (0.05, 0.5),
            300,
            conditional,
            torch.Generator().manual_seed(0),
        )
        assert exact["score_mse_q_mean"] < 1e-8 and set(exact["score_mse_q"]) == {"0.05", "0.5"}
        assert wrong["score_mse_q"]["0.05"] > 1.0  # negative control: the source score is far off on q_t


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        run_tgdp_experiment(TGDPSettings(methods=("tgdp", "magic")))


@pytest.fixture(scope="module")
def full_grid(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The full grid (n_s = 10,000, n_t in {10, 100, 1000}, 3 seeds, both versions; about 35 min on one core)."""
    torch.set_num_threads(1)
    result = run_tgdp_experiment(TGDPSettings(), out_dir=tmp_path_factory.mktemp("tgdp_sim"), progress=True)
    print(result["table"])
    return result


def _losses(summary: list, methods: tuple[str, ...], strict: bool = True) -> list[dict]:
    """Where ``methods`` fails the claim: at n_t = 10 and 100 (both versions) not below BOTH baselines by more
    than 2 combined SE (1 SE unless ``strict``); when ``strict``, also at n_t = 1000 worse than the better
    baseline by more than 2 combined SE."""
    key = "beats_2se" if strict else "beats"
    out = [
        c
        for conditional in (False, True)
        for n_t in (10, 100)
        for method in methods
        for baseline in ("target_only", "fine_tune")
        if not (c := compare(summary, method, baseline, n_t, conditional))[key]
    ]
    for conditional in (False, True) if strict else ():
        for method in methods:
            cs = [compare(summary, method, b, 1000, conditional) for b in ("target_only", "fine_tune")]
            best = min(cs, key=lambda c: c["gap"])  # the baseline with the lower KL
            if best["worse_2se"]:
                out.append(best)
    return out


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the suite's 300 s limit is for the default run
def test_exact_guidance_on_the_learned_source_beats_the_baselines(full_grid: dict) -> None:
    """With the exact grad log h_t added to the LEARNED source score, TGDP beats target-only and fine-tuning at
    n_t = 10 and 100: the composition, the source model and the evaluation are right (measured KL 0.054 uncond.,
    0.062 cond., vs 0.11-1.13 for the baselines)."""
    assert not _losses(full_grid["summary"], ("tgdp_exact_h",), strict=False)


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.xfail(
    strict=False,
    reason=(
        "measured: no learned TGDP variant beats target-only and fine-tuning by 2 combined SE. Network guidance "
        "(3 seeds): uncond. n_t = 100 TGDP 0.73 +- 0.24 vs target-only 0.11 +- 0.01 nats. Network-free kernel guidance "
        "with the cross-validated quadratic ratio (5 seeds, n_eval 500): uncond. 1.27 +- 0.32 / 0.63 +- 0.18 / "
        "0.34 +- 0.09 at n_t = 10 / 100 / 1000 vs target-only 0.60 / 0.17 / 0.04; cond. 0.97 +- 0.17 (a tie) / "
        "0.48 / 0.21 vs 0.97 / 0.18 / 0.03. Its log-h error is at t <= 0.1 on q_t points (0.6-2.0), the misfit of a "
        "quadratic log w to the true log cosh - log cosh (log-w MSE on p 3.6 even at n_t = 1000). The noisy "
        "classifier as log h (seed 0): 0.6-15 nats, log-h MSE 14 at t = 0.01. Exact h on the learned source: 0.06. "
        "Kernel guidance above a switch time chosen on held-out target rows, target-only (fine-tuned) score below "
        "(5 seeds): uncond. 0.86 +- 0.22 (0.76 +- 0.23) / 0.17 +- 0.06 (0.16 +- 0.03) / 0.038 (0.072); cond. "
        "0.88 +- 0.13 (0.92 +- 0.17) / 0.21 (0.12) / 0.033 (0.029): ties with both baselines everywhere. Unconditional "
        "at n_t = 10 the kernel-guided score's error on q_t exceeds the target-only one's at every t <= 0.5 (seeds "
        "3-4), so a switch has nothing to keep; conditional it is smaller only at t >= 0.1, where errors are small."
    ),
)
def test_learned_tgdp_beats_the_baselines(full_grid: dict) -> None:
    """The paper's claim on its simulation: ONE learned TGDP variant (no exact w or h anywhere) below target-only
    and fine-tuning at n_t = 10 and 100, both versions, by more than 2 combined SE over seeds, and not worse
    than the better baseline beyond 2 SE at n_t = 1000."""
    assert any(not _losses(full_grid["summary"], (m,)) for m in LEARNED)


def test_the_tgdp_study_runs_and_reports_through_gentransfer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from theory.cli import main

    out = tmp_path / "run"
    assert main(["run", *preset_args("tgdp_simulation"), "--out", str(out), "--quiet"]) == 0
    records = load_records(out)
    assert len(records) == 2 * len(METHODS)
    assert "TGDP against the baselines" in (out / "report.md").read_text()
    # the same config through the library gives the same numbers (one seeding scheme, whoever calls)
    settings = preset_settings("tgdp_simulation")
    library = run_tgdp_experiment(settings)["records"]
    key = lambda r: (r["seed"], r["conditional"], r["n_t"], r["method"])  # noqa: E731
    assert {key(r): r["kl"] for r in library} == {key(r): r["kl"] for r in records}
    capsys.readouterr()
    assert main(["report", str(out)]) == 0 and "| uncond | 10 |" in capsys.readouterr().out
    assert (
        main(["run", *preset_args("tgdp_simulation"), "--out", str(out), "--quiet", "--no-report"]) == 0
    )  # nothing left to run
    assert "0/0" not in capsys.readouterr().out and load_records(out) == records
    other = ["run", *preset_args("tgdp_simulation"), "--out", str(out), "--set", "grid.n_s=300"]
    assert main(other) == 2 and "another study" in capsys.readouterr().err


def test_adding_a_method_changes_no_other_methods_records(tmp_path: Path) -> None:
    """Every cell draws from a digest of its own coordinates: a grid with more methods gives the methods it shares
    with a smaller grid the same records, bit for bit."""
    from dataclasses import replace

    small = replace(preset_settings("tgdp_simulation"), methods=("target_only", "fine_tune"), conditional=(False,))
    large = replace(small, methods=("source_only", "target_only", "tgdp_kernel", "fine_tune"))

    def numbers(settings: TGDPSettings, out: Path) -> dict[str, tuple[float, float]]:
        records = run_tgdp_experiment(settings, out_dir=out)["records"]
        return {r["method"]: (r["kl"], r["mmd2"]) for r in records}

    first, second = numbers(small, tmp_path / "small"), numbers(large, tmp_path / "large")
    assert set(second) == {"source_only", "target_only", "tgdp_kernel", "fine_tune"}
    assert {m: second[m] for m in first} == first


def test_a_new_method_in_the_table_changes_no_cell_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    import theory.studies.tgdp.methods as methods

    before = {(m, n): methods.cell_seed(0, n, m) for m in METHODS for n in (10, 100)}
    monkeypatch.setattr(methods, "METHODS", ("a_new_method", *METHODS))
    assert {(m, n): methods.cell_seed(0, n, m) for m in METHODS for n in (10, 100)} == before
    assert len(set(before.values())) == len(before) - sum(m in methods.REFERENCES for m in METHODS)


def test_every_method_of_the_table_has_a_fit() -> None:
    from theory.studies.tgdp.methods import FITTERS

    assert list(FITTERS) == list(METHODS)
