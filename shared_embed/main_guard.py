"""Worker processes started with ``spawn`` (the study engine's local pool, a dask LocalCluster) import the main
script again. A script that starts them from its top level, outside ``if __name__ == "__main__":``, would start
them again in every worker, whose start-up then fails with screens of tracebacks and a ``BrokenProcessPool``.
:func:`check_main_guard` says so in one line before any process starts.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from types import FrameType

from .errors import GentransferError

__all__ = ["MainGuardError", "check_main_guard"]


class MainGuardError(GentransferError, SystemExit):
    """Worker processes were started from a script's top level, outside ``if __name__ == "__main__":``.

    A GentransferError to ``except``; left uncaught it ends the script like ``sys.exit(message)``: the one-line
    message and exit status 1, with no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.code = message  # what SystemExit prints


def check_main_guard(what: str) -> None:
    """Raise :class:`MainGuardError` when this call runs in the top-level code of the main script (a file) outside
    an ``if __name__ == "__main__":`` block: ``spawn``-ed workers import that script again and would run the
    call again (their start-up fails, and the pool breaks). Interactive sessions, notebooks, ``python -c`` and
    calls from a guarded block or from a function pass. ``what`` names what is about to start."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path:
        return
    frame: FrameType | None = sys._getframe(1)
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None:
        return
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return  # no readable source: nothing to say
    if any(_guards(node, frame.f_lineno) for node in ast.walk(tree)):
        return
    raise MainGuardError(
        f"{Path(path).name}, line {frame.f_lineno}: starting {what} from the script's top level; put the script's "
        'calls under `if __name__ == "__main__":` (spawned workers import the script again and would run them again)'
    )


def _guards(node: ast.AST, line: int) -> bool:
    """Whether ``node`` is an ``if __name__ == "__main__":`` block whose body holds ``line``."""
    if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and len(node.test.ops) == 1):
        return False
    sides = [node.test.left, *node.test.comparators]
    names = {s.id for s in sides if isinstance(s, ast.Name)}
    texts = {s.value for s in sides if isinstance(s, ast.Constant)}
    if not (isinstance(node.test.ops[0], ast.Eq) and names == {"__name__"} and texts == {"__main__"}):
        return False
    return node.body[0].lineno <= line <= (node.body[-1].end_lineno or node.body[-1].lineno)
