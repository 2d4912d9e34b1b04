"""Running the code a page teaches: its ```python blocks, in order, in one namespace, with the printed lines kept."""

from __future__ import annotations

import contextlib
import io
import re

__all__ = ["python_blocks", "run_blocks"]


def python_blocks(text: str) -> list[str]:
    """The bodies of the ```python fenced blocks of a Markdown ``text``, in order."""
    return re.findall(r"```python\n(.*?)```", text, re.S)


def run_blocks(blocks: list[str], name: str) -> list[str]:
    """Execute ``blocks`` one after another in one fresh namespace (as a reader runs a page top to bottom);
    return the lines they printed. ``name`` is the file name in tracebacks."""
    namespace: dict[str, object] = {"__name__": "__doc_page__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, code in enumerate(blocks):
            exec(compile(code, f"{name} (python block {i + 1})", "exec"), namespace)
    return out.getvalue().splitlines()
