"""Groups of cells as dask.distributed tasks: on a ``LocalCluster`` started here, or on a running scheduler.

    gentransfer run configs/full.toml --out /shared/runs/full --executor dask --workers 8
    gentransfer run configs/full.toml --out /shared/runs/full --executor dask --scheduler tcp://10.0.0.5:8786

The scheduler hands a group to whichever worker is free (biggest groups first), so hosts never idle while
others hold a queue. A group whose worker dies (killed, out of memory, host gone) is submitted again, up to
``retries`` times: the scheduler of a ``LocalCluster`` gives the group up at once (``allowed-failures = 0``), so
``retries`` is the whole count there; a running scheduler first retries on its own
(``distributed.scheduler.allowed-failures``, default 3). Workers write the records into the ``--out`` folder
themselves, so every worker must see it (a shared file system).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass

import dask
from distributed import Client, Future, LocalCluster, as_completed
from distributed.comm.core import CommClosedError
from distributed.scheduler import KilledWorker

from shared_embed.errors import GentransferError
from theory.engine.loop import GroupJob, GroupLike, Progress, Record


@dataclass
class DaskExecutor:
    """The engine's executor on dask.distributed (see the module doc).

    ``scheduler``: a running scheduler's address, or None to start a LocalCluster of ``workers`` processes
    (one thread each; a group's torch threads are the study's ``run.threads``) for the run.
    """

    scheduler: str | None = None
    workers: int = 1
    retries: int = 2
    #: seconds to wait for a first worker of a running scheduler before giving up
    worker_timeout: float = 120.0

    def run(self, job: GroupJob, groups: Sequence[GroupLike], progress: Progress) -> list[list[Record]]:
        with self._client(min(self.workers, len(groups)), progress.say) as client:
            futures: dict[Future, int] = {}
            tries = [0] * len(groups)

            def submit(i: int) -> Future:
                # earlier (bigger) groups first; pure=False: a retry is a new task, not the lost one's result
                fut = client.submit(job, groups[i], pure=False, priority=len(groups) - i)
                futures[fut] = i
                return fut

            results: dict[int, list[Record]] = {}
            queue = as_completed([submit(i) for i in range(len(groups))])
            try:
                for fut in queue:
                    i = futures.pop(fut)
                    if fut.status == "error" and isinstance(fut.exception(), KilledWorker):
                        if tries[i] >= self.retries:
                            raise GentransferError(
                                f"group {_name(groups[i], i)} lost its worker {tries[i] + 1} "
                                f"time(s) (--retries {self.retries}); run the same command "
                                "again to resume"
                            )
                        tries[i] += 1
                        progress.say(
                            f"[{_name(groups[i], i)}] its worker was lost; submitted again ({tries[i]}/{self.retries})"
                        )
                        queue.add(submit(i))
                        continue
                    if fut.status == "cancelled":  # the scheduler went away, or cancelled the task
                        raise self._lost(len(groups) - len(results))
                    results[i] = fut.result()  # re-raises a task's error here
                    progress.finish_group(groups[i])
            except (CancelledError, CommClosedError) as err:
                with contextlib.suppress(Exception):
                    client.cancel(list(futures))
                raise self._lost(len(groups) - len(results), err) from err
            except BaseException:
                with contextlib.suppress(Exception):
                    client.cancel(list(futures))
                raise
        return [results[i] for i in range(len(groups))]

    def _lost(self, unfinished: int, err: BaseException | None = None) -> GentransferError:
        """The error of a run whose scheduler went away: how many groups are unfinished, how to resume."""
        where = self.scheduler or "of the LocalCluster"
        why = f" ({type(err).__name__}: {' '.join(str(err).split())[:200]})" if err is not None and str(err) else ""
        return GentransferError(
            f"the dask scheduler {where} was lost with {unfinished} group(s) unfinished{why}; "
            "finished cells are kept: run the same command again to resume"
        )

    @contextlib.contextmanager
    def _client(self, workers: int, say: Callable[[str], None]) -> Iterator[Client]:
        """A client of the running scheduler (once it has a worker) or of a LocalCluster of ``workers``
        processes (never more than the groups to run)."""
        if self.scheduler is not None:
            try:
                client = Client(self.scheduler, timeout="30s")
            except (OSError, ValueError, TimeoutError) as err:
                raise GentransferError(
                    f"--scheduler {self.scheduler}: no dask scheduler answers there ({err})"
                ) from err
            with client:
                self._wait_for_a_worker(client, say)
                yield client
            return
        with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        with cluster, Client(cluster) as client:
            yield client

    def _wait_for_a_worker(self, client: Client, say: Callable[[str], None]) -> None:
        """Say so when the scheduler has no worker yet; GentransferError when none joins in ``worker_timeout``."""
        if client.scheduler_info().get("workers"):
            return
        say(
            f"the dask scheduler {self.scheduler} has no worker yet: waiting up to {self.worker_timeout:g} s for "
            f"one (start one with: dask worker {self.scheduler})"
        )
        try:
            client.wait_for_workers(1, timeout=self.worker_timeout)
        except (TimeoutError, OSError) as err:
            raise GentransferError(
                f"no dask worker joined the scheduler {self.scheduler} within "
                f"{self.worker_timeout:g} s; start workers (dask worker {self.scheduler}) and "
                "run the same command again"
            ) from err


def _name(group: object, index: int) -> str:
    return str(getattr(group, "stem", f"group {index}"))
