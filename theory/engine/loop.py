"""THE loop over a study's cells: groups of cells (cells that share fitted models) run in this process or in
worker processes, every cell reported to one progress line.

A study plugs in with a ``runner(spec, out_dir, group, log, on_cell) -> records``: a top-level function (so a
``spawn``-ed worker can import it) that rebuilds the study from ``spec`` (a JSON-able dict), runs the cells of
``group`` through :func:`run_cells` and returns their records. The transfer sweep (:mod:`theory.studies.transfer.sweep`) and the
TGDP simulation (:mod:`theory.studies.tgdp.experiment`) are such studies; what a record holds is the study's business.

Workers exit as soon as the process that started them is gone, even when it was killed with SIGKILL.

Other machines: an :class:`Executor` (``executor=`` of :func:`run_groups`) runs the groups elsewhere, a
dask.distributed cluster or a SLURM job array (:mod:`theory.engine.executors`); each group goes out as a picklable
:class:`GroupJob`, and the progress line is this module's :class:`Progress` whichever executor runs them.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shared_embed.main_guard import check_main_guard

Record = dict[str, Any]
Log = Callable[[str], None]


class GroupLike(Protocol):
    """What the engine reads of a group: its cells (and a name for messages)."""

    @property
    def cells(self) -> Sequence[Any]: ...  # read-only: the groups are frozen dataclasses


Runner = Callable[[dict[str, Any], Path | None, Any, Log | None, Callable[[], None]], list[Record]]


def run_cells(cells: Sequence[Any], run_one: Callable[[Any], Record], on_cell: Callable[[], None]) -> list[Record]:
    """``run_one`` on every cell of a group in order, telling ``on_cell`` after each (the progress line)."""
    records = []
    for cell in cells:
        records.append(run_one(cell))
        on_cell()
    return records


class Progress:
    """``progress: done/total cells done, elapsed, about T left`` after each cell (or group of cells).

    The time left is weighted by work: each cell counts for its share of ``work`` (estimated cost of each group,
    e.g. CPU-seconds, spread evenly over the group's cells; default one unit per cell), so cells that take no
    time (an exact linear fit) do not count as much as a flow's.

    - One group at a time (this process): left = elapsed / work done x work left.
    - Groups on ``workers`` in parallel (:meth:`start_group` / :meth:`finish_group`): the seconds per unit of work
      k are learned from the finished groups' own durations; each running group is credited with the share of its
      work its running time stands for (at most 95%); left = the larger of (work left x k / the workers the
      unfinished groups keep busy) and the longest running group's own remainder. Without it a group that
      finishes first would be charged for the time every other worker spent on work not yet counted.

    With a ``heartbeat`` (seconds), a line also comes when no cell has finished for that long (the first after
    ``heartbeat`` seconds, then every ``4 x heartbeat``): a huge first cell or a cluster with no free worker is
    never silence. Call :meth:`stop` when the run ends."""

    def __init__(
        self, total: int, say: Log, heartbeat: float | None = None, work: float | None = None, workers: int = 1
    ) -> None:
        self.total, self.done, self.say, self.start = total, 0, say, time.perf_counter()
        self.work = float(total) if work is None else float(work)
        self.work_done = 0.0
        self.workers = max(int(workers), 1)
        #: id(group) -> its work, set by :func:`run_groups` (groups not listed count one unit per cell)
        self.group_work: dict[int, float] = {}
        self._running: dict[int, tuple[float, float]] = {}  # id(group) -> (start time, work)
        self._finished_seconds = 0.0
        self._finished_work = 0.0
        self._groups_finished = 0
        self.last = self.start
        self._stopped = threading.Event()
        if heartbeat is not None and total > 0:
            threading.Thread(target=self._beat, args=(heartbeat,), daemon=True, name="progress-heartbeat").start()

    def advance(self, cells: int = 1, work: float | None = None) -> None:
        """``cells`` more cells are done, worth ``work`` (default: one unit each)."""
        self.done += cells
        self.work_done += float(cells) if work is None else work
        self.last = time.perf_counter()
        elapsed = self.last - self.start
        left = self._parallel_left(self.last) if self._finished_work > 0 else self._serial_left(elapsed)
        self.say(
            f"progress: {self.done}/{self.total} cells done, {duration(elapsed)} elapsed"
            + (f", about {duration(max(left, 0.0))} left" if left == left else "")
        )

    def _serial_left(self, elapsed: float) -> float:
        share = self.work_done / self.work if self.work > 0 else self.done / max(self.total, 1)
        return elapsed / share * (1.0 - share) if share > 0 else float("nan")

    def _parallel_left(self, now: float) -> float:
        per_work = self._finished_seconds / self._finished_work  # seconds of one worker per unit of work
        credit, longest = 0.0, 0.0
        for started, work in self._running.values():
            share = min(0.95, (now - started) / (work * per_work)) if work > 0 else 0.95
            credit += share * work
            longest = max(longest, (1.0 - share) * work * per_work)
        unfinished = max(len(self.group_work) - self._groups_finished, len(self._running), 1)
        return max((self.work - self.work_done - credit) * per_work / min(self.workers, unfinished), longest)

    def start_group(self, group: GroupLike) -> None:
        """A worker starts ``group`` now (the parallel estimate of the time left)."""
        work = self.group_work.get(id(group), float(len(group.cells)))
        self._running[id(group)] = (time.perf_counter(), work)

    def finish_group(self, group: GroupLike) -> None:
        """A whole group is done (an executor's or a worker's): its cells and its work."""
        work = self.group_work.get(id(group), float(len(group.cells)))
        started = self._running.pop(id(group), None)
        self._groups_finished += 1
        if started is not None and self.workers > 1:
            self._finished_seconds += time.perf_counter() - started[0]
            self._finished_work += work
        self.advance(len(group.cells), work)

    def stop(self) -> None:
        self._stopped.set()

    def _beat(self, every: float) -> None:
        wait = every
        while not self._stopped.wait(max(0.05, self.last + wait - time.perf_counter())):
            if time.perf_counter() - self.last >= wait:
                now = time.perf_counter()
                self.say(
                    f"progress: {self.done}/{self.total} cells done, {duration(now - self.start)} elapsed; "
                    f"still working (no cell finished in the last {duration(now - self.last)})"
                )
                self.last, wait = time.perf_counter(), 4 * every


def duration(seconds: float) -> str:
    """``42s``, ``3m07s`` or ``1h05m``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _die_with_parent(parent: int) -> None:
    """A worker's watchdog: exit the moment the process that started it is gone (killed, even by SIGKILL)."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    import torch

    torch.set_num_threads(threads)
    os.environ.setdefault("GENTRANSFER_QUIET", "1")
    threading.Thread(target=_die_with_parent, args=(parent,), daemon=True, name="die-with-parent").start()


def _worker(runner: Runner, spec: dict[str, Any], out_dir: str | None, group: GroupLike, verbose: bool) -> list[Record]:
    """Worker entry point: run one group, return its records."""
    log = (lambda msg: print(msg, flush=True)) if verbose else None
    return runner(spec, None if out_dir is None else Path(out_dir), group, log, lambda: None)


#: One group at a time per process: groups seed torch's global generator, so two in threads of one process
#: (a dask worker started with --nthreads 2) would draw from each other's streams.
_ONE_GROUP_AT_A_TIME = threading.Lock()


@dataclass(frozen=True)
class GroupJob:
    """One group's work as another process or machine runs it: ``job(group) -> records``. Picklable (the runner
    is a top-level function); ``out_dir`` is absolute, so it must be a folder every worker sees (shared disk).
    Calls in threads of one process run one after the other."""

    runner: Runner
    spec: dict[str, Any]
    out_dir: str | None
    threads: int = 1
    verbose: bool = False

    def __call__(self, group: GroupLike) -> list[Record]:
        import torch

        with _ONE_GROUP_AT_A_TIME:
            torch.set_num_threads(self.threads)
            os.environ.setdefault("GENTRANSFER_QUIET", "1")
            return _worker(self.runner, self.spec, self.out_dir, group, self.verbose)


class Executor(Protocol):
    """Runs groups elsewhere: ``job`` on every group, ``progress.finish_group(group)`` as each finishes;
    returns each group's records, in group order. A group may run twice (a lost worker's group is retried):
    its records are written atomically and do not depend on where or after what it ran."""

    def run(self, job: GroupJob, groups: Sequence[GroupLike], progress: Progress) -> list[list[Record]]: ...


def run_groups(
    runner: Runner,
    spec: dict[str, Any],
    out_dir: Path | None,
    groups: Sequence[GroupLike],
    *,
    workers: int = 1,
    threads: int | None = None,
    log: Log | None = None,
    executor: Executor | None = None,
    cost: Callable[[Any], float] | None = None,
) -> list[Record]:
    """Run every group (in this process when ``workers`` is 1 or there is one group, else in ``workers``
    spawned processes, or through ``executor`` when given); return the records of all groups, in group order.

    ``threads``: torch threads of each worker, and of this process while it runs the groups itself (as a worker
    would: small ops crawl when threads oversubscribe the cores); None leaves this process's setting alone
    (workers get 1). ``cost(group)``: the group's estimated cost (any unit, e.g. CPU-seconds), which weights the
    progress line's time left; None counts every cell alike.
    """
    say = log or (lambda _msg: None)
    if not groups:
        return []
    costs = [float(cost(g)) if cost is not None else float(len(g.cells)) for g in groups]
    parallel = executor is None and workers > 1 and len(groups) > 1
    progress = Progress(
        sum(len(g.cells) for g in groups),
        say,
        HEARTBEAT_SECONDS if log is not None else None,
        work=sum(costs),
        workers=min(workers, len(groups)) if parallel else 1,
    )
    progress.group_work = {id(g): c for g, c in zip(groups, costs)}
    try:
        return _run_groups(runner, spec, out_dir, groups, workers, threads, log, executor, progress)
    finally:
        progress.stop()


#: seconds without a finished cell before the progress line says that cells are running
HEARTBEAT_SECONDS = 5.0


def _run_groups(
    runner: Runner,
    spec: dict[str, Any],
    out_dir: Path | None,
    groups: Sequence[GroupLike],
    workers: int,
    threads: int | None,
    log: Log | None,
    executor: Executor | None,
    progress: Progress,
) -> list[Record]:
    """:func:`run_groups` with its progress line."""
    if executor is not None:
        job = GroupJob(
            runner, spec, None if out_dir is None else str(Path(out_dir).resolve()), threads or 1, log is not None
        )
        return [r for records in executor.run(job, groups, progress) for r in records]
    if workers == 1 or len(groups) == 1:
        import torch

        before = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            return [r for g in groups for r in runner(spec, out_dir, g, log, _per_cell(progress, g))]
        finally:
            torch.set_num_threads(before)
    check_main_guard(f"{workers} worker processes (workers > 1)")
    ctx = multiprocessing.get_context("spawn")
    out = None if out_dir is None else str(out_dir)
    results: dict[int, list[Record]] = {}
    with ProcessPoolExecutor(
        max_workers=min(workers, len(groups)),
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(threads or 1, os.getpid()),
    ) as pool:
        futures: dict[Future, int] = {
            pool.submit(_worker, runner, spec, out, g, log is not None): i for i, g in enumerate(groups)
        }
        pending = set(futures)
        started = min(workers, len(groups))  # the pool takes groups in submission order, one per free worker
        for g in groups[:started]:
            progress.start_group(g)
        try:
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    results[futures[fut]] = fut.result()  # re-raises a worker's error here
                    progress.finish_group(groups[futures[fut]])
                    if started < len(groups):
                        progress.start_group(groups[started])
                        started += 1
        except BaseException as err:
            for fut in pending:
                fut.cancel()
            if not isinstance(err, Exception):  # Ctrl-C or SIGTERM: stop the workers now, not after their groups
                _stop_workers(pool)
            raise
    return [r for i in range(len(groups)) for r in results[i]]


def _per_cell(progress: Progress, group: GroupLike) -> Callable[[], None]:
    """The ``on_cell`` of a group run in this process: one cell, worth its share of the group's work."""
    share = progress.group_work.get(id(group), float(len(group.cells))) / max(len(group.cells), 1)
    return lambda: progress.advance(1, share)


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate the pool's worker processes (their finished records are on disk; a rerun resumes)."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
