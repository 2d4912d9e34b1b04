"""Progress bars: where they show, and what GENTRANSFER_QUIET means."""

from __future__ import annotations

import pytest

from shared_embed import ConfigError
from shared_embed.progress import env_flag, in_notebook, progress_bar, watched


@pytest.mark.parametrize(
    "raw, quiet", [("1", True), ("true", True), ("ON", True), ("0", False), ("no", False), ("", False)]
)
def test_gentransfer_quiet_means_what_it_says(raw: str, quiet: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENTRANSFER_QUIET", raw)
    assert env_flag("GENTRANSFER_QUIET") is quiet
    assert watched(progress=True) is (not quiet)  # an explicit request still yields to GENTRANSFER_QUIET=1


def test_unset_and_unreadable_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENTRANSFER_QUIET", raising=False)
    assert env_flag("GENTRANSFER_QUIET") is False and env_flag("GENTRANSFER_QUIET", default=True) is True
    assert watched(progress=False) is False
    monkeypatch.setenv("GENTRANSFER_QUIET", "maybe")
    with pytest.raises(ConfigError, match="GENTRANSFER_QUIET='maybe'"):
        watched()


def test_outside_a_notebook_the_bar_is_the_text_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GENTRANSFER_QUIET", raising=False)
    assert not in_notebook()
    bar = progress_bar(enabled=False, total=3)
    assert bar.disable and type(bar).__module__.startswith("tqdm")
    bar.close()
