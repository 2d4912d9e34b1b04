"""Progress bars that show where a person is watching: a terminal or a Jupyter notebook, and nowhere else.

``GENTRANSFER_QUIET`` silences them: ``1``/``true``/``yes``/``on`` mean quiet, ``0``/``false``/``no``/``off`` or
unset mean not; any other value is a ConfigError naming the variable. In a notebook the bar is tqdm's widget
when ipywidgets is installed and tqdm's text bar otherwise (so no "IProgress not found" warning).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm as text_tqdm

from .errors import ConfigError

__all__ = ["FALSE", "TRUE", "env_flag", "in_notebook", "progress_bar", "watched"]

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


def env_flag(name: str, default: bool = False) -> bool:
    """The boolean environment variable ``name`` (unset: ``default``); a ConfigError for other values."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ConfigError(f"environment variable {name}={raw!r}: use 1/true/yes/on or 0/false/no/off")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (an IPython kernel app is running)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def watched(progress: bool | None = None) -> bool:
    """Whether to show a bar: never under GENTRANSFER_QUIET; else ``progress`` if set, else on a terminal or
    in a notebook."""
    if env_flag("GENTRANSFER_QUIET"):
        return False
    if progress is not None:
        return bool(progress)
    return sys.stderr.isatty() or in_notebook()


def progress_bar(*, enabled: bool, **kwargs: Any) -> text_tqdm:
    """A tqdm bar: the notebook widget in a notebook with ipywidgets, the text bar otherwise."""
    if enabled and in_notebook():
        try:
            import ipywidgets  # noqa: F401
        except ImportError:
            pass
        else:
            from tqdm.notebook import tqdm as notebook_tqdm

            return notebook_tqdm(disable=False, **kwargs)
    return text_tqdm(disable=not enabled, **kwargs)
