"""Groups of cells as one SLURM job array, submitted through submitit (no sbatch script to write).

    gentransfer run configs/full.toml --out /shared/runs/full --executor slurm --workers 32 \\
        --slurm slurm_partition=cpu --slurm timeout_min=120

One array job per group; ``--workers`` caps how many run at once (``slurm_array_parallelism``), each job asks
for ``run.threads`` CPUs, and its stdout/stderr go to ``OUT/slurm/JOBID_TASK_log.{out,err}``. A preempted or
timed-out job is requeued by submitit (the group runs again: finished records are rewritten with the same
content, and a source fit saved in the folder is loaded, not refitted); a job that dies without a result (node
failure) is submitted again up to ``retries`` times. ``--slurm-cluster local`` runs the same array as processes
of this machine, to try a recipe out. The process that submitted waits for the array and prints the progress.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError
from submitit.helpers import Checkpointable

from shared_embed.errors import GentransferError
from theory.engine.loop import GroupJob, GroupLike, Progress, Record


class RequeueableJob(Checkpointable):
    """A :class:`~theory.engine.loop.GroupJob` that SLURM may preempt: submitit's ``checkpoint`` resubmits the same
    call (a group's records do not depend on how often it ran)."""

    def __init__(self, job: GroupJob) -> None:
        self.job = job

    def __call__(self, group: GroupLike) -> list[Record]:
        return self.job(group)


@dataclass
class SlurmExecutor:
    """The engine's executor on SLURM through submitit (see the module doc)."""

    folder: Path
    workers: int = 1
    retries: int = 2
    cluster: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    poll_seconds: float = 1.0

    def run(self, job: GroupJob, groups: Sequence[GroupLike], progress: Progress) -> list[list[Record]]:
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        try:
            executor.update_parameters(
                **{
                    "name": "gentransfer",
                    "cpus_per_task": job.threads,
                    "slurm_array_parallelism": self.workers,
                    **self.options,
                }
            )
        except NameError as err:  # submitit's word for an unknown parameter
            raise GentransferError(f"--slurm: {err}") from err
        call = RequeueableJob(job)
        pending = dict(enumerate(executor.map_array(call, list(groups))))
        progress.say(f"submitted {len(pending)} job(s) ({executor.cluster}); logs in {self.folder}")
        tries = [0] * len(groups)
        results: dict[int, list[Record]] = {}
        try:
            while pending:
                for i, sub in [(i, s) for i, s in pending.items() if s.done()]:
                    del pending[i]
                    try:
                        results[i] = sub.result()
                    except FailedJobError as err:  # the group raised: its traceback, not a retry
                        raise GentransferError(f"job {sub.job_id} failed (log {sub.paths.stderr}):\n{err}") from err
                    except UncompletedJobError as err:  # died without a result: a lost node, a kill
                        if tries[i] >= self.retries:
                            raise GentransferError(
                                f"job {sub.job_id} ended without a result {tries[i] + 1} "
                                f"time(s) (--retries {self.retries}): {err}"
                            ) from err
                        tries[i] += 1
                        progress.say(
                            f"job {sub.job_id} ended without a result; submitted again ({tries[i]}/{self.retries})"
                        )
                        pending[i] = executor.submit(call, groups[i])
                        continue
                    progress.finish_group(groups[i])
                if pending:
                    time.sleep(self.poll_seconds)
        except BaseException:
            for sub in pending.values():
                sub.cancel(check=False)
            raise
        return [results[i] for i in range(len(groups))]
