"""A transfer-sweep runner whose first group stops after its first cell and waits to be killed.

The executor tests swap it in for ``theory.studies.transfer.sweep.run_transfer_group``: the first worker to finish a cell claims
``KILL_FILE`` (the env var's path; exclusive create, so one worker only), writes its pid there and sleeps; the test
kills that pid, and the group must be run again elsewhere. Top-level, so dask workers import it by name.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from theory.studies.transfer.sweep import run_transfer_group

KILL_FILE = "GENTRANSFER_TEST_KILL_FILE"


def run_group_killed_once(
    spec: dict[str, Any], out_dir: Path | None, group: Any, log: Any, on_cell: Callable[[], None]
) -> list[dict[str, Any]]:
    path = os.environ[KILL_FILE]

    def cell_done() -> None:
        on_cell()
        try:
            fd = os.open(path + ".claim", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        Path(path + ".tmp").write_text(str(os.getpid()))
        os.replace(path + ".tmp", path)
        time.sleep(120)  # killed long before

    return run_transfer_group(spec, out_dir, group, log, cell_done)
