"""One study protocol: every shipped study is an entry of the registry with the same four calls, a user's own study
registers beside them and runs through ``gentransfer run`` / ``report`` / ``read_results`` like the shipped ones,
and a user's own task (``task.name = "module:Class"``) runs in the transfer study."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from shared_embed.errors import ConfigError, DataError
from tests.presets import preset_args
from theory.cli import main
from theory.engine.results import flatten_record, read_results
from theory.engine.study import SHIPPED, ReportOptions, RunOptions, Study, get_study, kind_of, register_study
from theory.engine.study_runs import refuse_options

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_every_shipped_study_is_an_entry_of_equal_rank(kind: str) -> None:
    study = get_study(kind)
    assert isinstance(study, Study) and study.KIND == kind


def test_an_unknown_kind_names_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="'nope' is not a study; valid: transfer, tgdp, digits, completion"):
        kind_of({"experiment": {"kind": "nope"}})
    assert kind_of({}) == "transfer"


def test_a_study_refuses_options_it_does_not_take(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="--shard is not an option of a digits study"):
        refuse_options("digits", frozenset(), RunOptions(shard="0/2"))
    refuse_options("transfer", frozenset({"shard", "device"}), RunOptions(shard="0/2", device="cpu"))
    code = main(["run", *preset_args("digits"), "--out", str(tmp_path / "d"), "--shard", "1/2"])
    assert code == 2 and "--shard is not an option of a digits study" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


class CountingStudy:
    """A user's study: each seed's cell records the seed squared; its report is the sum."""

    KIND = "counting"
    OPTIONS: frozenset[str] = frozenset()

    def resolved(self, raw: dict[str, Any]) -> dict[str, Any]:
        seeds = raw.get("counting", {}).get("seeds", [0, 1, 2])
        if not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"counting.seeds must be whole numbers, got {seeds!r}")
        return {"experiment": raw["experiment"], "counting": {"seeds": seeds}}

    def run(self, raw: dict[str, Any], out: Path, options: RunOptions) -> int:
        config = self.resolved(raw)
        (out / "config.json").write_text(json.dumps(config))
        for s in config["counting"]["seeds"]:
            (out / f"cell_{s}.json").write_text(json.dumps({"seed": s, "value": s * s, "extra": {"half": s / 2}}))
        if options.report:
            print(self.report(out, ReportOptions()))
        return 0

    def report(self, out: Path, options: ReportOptions) -> str:
        return f"sum = {sum(r['value'] for r in self.records(out))}"

    def records(self, out: Path) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted(out.glob("cell_*.json"))]


def test_a_users_study_runs_reports_and_reads_like_a_shipped_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register_study("counting", CountingStudy())
    config = tmp_path / "counting.toml"
    config.write_text('[experiment]\nkind = "counting"\nname = "c"\n\n[counting]\nseeds = [1, 2, 3]\n')
    assert main(["run", str(config), "--out", str(tmp_path / "run")]) == 0
    assert "sum = 14" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip() == "sum = 14"
    rows = read_results(tmp_path / "run", frame=False)
    assert [(r["study"], r["seed"], r["extra.half"]) for r in rows] == [("counting", s, s / 2) for s in (1, 2, 3)]
    with pytest.raises(ConfigError, match="shipped study"):
        register_study("digits", CountingStudy())


def test_flatten_record_spreads_nested_dicts_into_dotted_columns() -> None:
    assert flatten_record({"a": 1, "b": {"c": 2, "d": {"e": [3]}}}) == {"a": 1, "b.c": 2, "b.d.e": [3]}


def test_read_results_refuses_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no config.json"):
        read_results(tmp_path)


USER_TASK = '''
import torch
from shared_embed.data import PairedData


class ShiftTask:
    """x | c ~ N(A_k W c, 0.25 I): a task of the user's, with the required members only."""

    def __init__(self, d_c=4, seed=0):
        self.d_c, self.d_h, self.d_x, self.seed = d_c, 1, 1, seed
        gen = torch.Generator().manual_seed(seed)
        self.w = torch.randn(1, d_c, generator=gen)
        self.a = {"source": 1.0, "target": -2.0}
        self.config = {"name": "shift", "d_c": d_c, "seed": seed}

    def sample_c(self, n, generator=None):
        return torch.randn(n, self.d_c, generator=generator)

    def sample(self, n, domain, generator=None):
        c = self.sample_c(n, generator)
        return PairedData(c, self.a[domain] * c @ self.w.T + 0.5 * torch.randn(n, 1, generator=generator))

    def log_prob(self, x, c, domain):
        return torch.distributions.Normal(self.a[domain] * c @ self.w.T, 0.5).log_prob(x).sum(-1)
'''

USER_CONFIG = """
[task]
name = "user_tasks_for_test:ShiftTask"
d_c = 3

[grid]
n_s = [200]
n_t = [20]
seeds = [0, 1]
heads = ["linear"]
variants = ["transfer", "no_transfer"]

[heads.linear]
kind = "linear_gaussian"
encoder = { hidden = [] }

[encoder]
embed_dim = "d_h"

[evaluation]
n_eval = 500
floor_n = 200
"""


def test_a_users_task_from_outside_the_package_runs_and_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "user_tasks_for_test.py").write_text(textwrap.dedent(USER_TASK))
    (tmp_path / "user.toml").write_text(USER_CONFIG)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    assert main(["run", str(tmp_path / "user.toml"), "--out", str(out), "--quiet"]) == 0
    rows = read_results(out, frame=False)
    assert {r["task_name"] for r in rows} == {"user_tasks_for_test:ShiftTask"} and len(rows) == 4
    assert all(r["status"] == "ok" and r["d_c"] == 3 for r in rows)
    capsys.readouterr()
    # a report imports only the code it is given: the folder alone cannot make it import the user's module
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--task user_tasks_for_test:ShiftTask" in err
    assert main(["report", str(out), "--task", "user_tasks_for_test:ShiftTask"]) == 0
    assert "user_tasks_for_test:ShiftTask" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "name, message",
    [
        ("no_such_module_here:Task", "cannot import 'no_such_module_here'"),
        ("theory.truth.tasks:NoSuchTask", "has no class 'NoSuchTask'"),
        ("two_gaussian", "task.name must be one of conditional_gaussian, conditional_mixture"),
        ("theory.engine.study:RunOptions", "takes no 'seed' argument"),
    ],
)
def test_a_bad_user_task_is_named_before_anything_runs(name: str, message: str) -> None:
    from theory.engine.config import TaskSpec

    with pytest.raises(ConfigError, match=message):
        TaskSpec.parse({"name": name})


def test_a_task_missing_a_member_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from theory.engine.config import TaskSpec

    (tmp_path / "half_task_for_test.py").write_text(
        "class Half:\n    def __init__(self, seed=0):\n        self.seed = seed\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="lacks d_c, d_h, d_x, config, sample, sample_c, log_prob"):
        TaskSpec.parse({"name": "half_task_for_test:Half"}).build(seed=0)
