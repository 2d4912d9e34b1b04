"""One owner per run folder: an OS-level lock (``fcntl.flock``) on ``DIR/.lock``, held for the whole run.

A run takes the lock before it reads or writes anything else in the folder and keeps it until its report is
written; the operating system drops it the moment the process ends (even by SIGKILL), so a crashed run never
leaves a stale lock. A second run into the same folder, of the same study or another, is refused at once with
:class:`~shared_embed.errors.FolderBusyError` naming the holder's pid and host (written into the lock file).

Shards (``--shard I/N``) of one study share a folder on purpose: each holds ``DIR/.lock`` shared and its own
``DIR/.lock-shard-I-of-N`` exclusive, so shards run together, the same shard never runs twice, and a whole run
never runs beside a shard. The study check (:func:`theory.engine.run_folder.claim`) runs under
``DIR/.claim-lock``, so two shards of different studies cannot both claim an empty folder.

Workers of the dask and SLURM executors take no lock: the process that submits their groups holds it for them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from shared_embed.errors import FolderBusyError

LOCK_FILE = ".lock"
CLAIM_LOCK_FILE = ".claim-lock"
#: resolved folder -> [open lock descriptors, re-entry count] of the locks this process holds
_HELD: dict[str, list] = {}


def _key(out_dir: str | os.PathLike[str]) -> str:
    return os.path.realpath(out_dir)


def _open(path: Path) -> int:
    """A descriptor on the lock file ``path`` (created; never through a symlink, never inherited)."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise FolderBusyError(
                f"{path} is a symbolic link; a run folder's lock file must be a regular file (remove the link)"
            ) from err
        raise


def _try(fd: int, mode: int) -> bool:
    """Whether ``flock(fd, mode)`` took the lock without waiting."""
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def holder(fd: int) -> str:
    """``pid 123 on host h, since T`` from the lock file open at ``fd`` ('an unknown process' if unreadable)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {int(info['pid'])} on host {info['host']}, since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "an unknown process"


def _stamp(fd: int, shard: str) -> None:
    """Write this process's pid, host and start time into the lock file (read by :func:`holder`)."""
    since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    text = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since, "shard": shard})
    os.ftruncate(fd, 0)
    os.pwrite(fd, (text + "\n").encode(), 0)


@contextlib.contextmanager
def claim_lock(out_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold ``DIR/.claim-lock`` exclusively (waiting for it): a short critical section, e.g. reading and
    writing ``study.json``."""
    fd = _open(Path(out_dir) / CLAIM_LOCK_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def _busy(out: Path, fd: int) -> FolderBusyError:
    """The refusal of a folder whose lock file ``fd`` is held: names the live shard holders first (the stamp of
    ``DIR/.lock`` is the last run's to start, which may have ended while other shards go on)."""
    who = _shard_holders(out) or [holder(fd)]
    more = f" and {len(who) - 1} more" if len(who) > 1 else ""
    return FolderBusyError(
        f"{os.fspath(out)!r} is in use by another gentransfer run ({who[0]}{more}); wait "
        "for it to end, or use another --out folder"
    )


def _shard_holders(out: Path) -> list[str]:
    """The holders of the shard lock files of ``out`` that are held now."""
    found = []
    for path in sorted(out.glob(f"{LOCK_FILE}-shard-*")):
        if path.is_symlink() or not path.is_file():
            continue
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            if _try(fd, fcntl.LOCK_SH):
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                found.append(holder(fd))
        finally:
            os.close(fd)
    return found


def _acquire(out: Path, shard: tuple[int, int]) -> list[int]:
    """Take the folder's locks for a run of ``shard`` (see the module doc); FolderBusyError when held."""
    index, count = shard
    fds: list[int] = []
    try:
        with claim_lock(out):
            fds.append(_open(out / LOCK_FILE))
            whole = count == 1
            if not _try(fds[0], fcntl.LOCK_EX if whole else fcntl.LOCK_SH):
                raise _busy(out, fds[0])
            if not whole:
                fds.append(_open(out / f"{LOCK_FILE}-shard-{index}-of-{count}"))
                if not _try(fds[1], fcntl.LOCK_EX):
                    raise _busy(out, fds[1])
                _stamp(fds[1], f"{index}/{count}")
            _stamp(fds[0], f"{index}/{count}")
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


@contextlib.contextmanager
def hold_folder(out_dir: str | os.PathLike[str], shard: tuple[int, int] = (0, 1)) -> Iterator[None]:
    """Hold the run folder ``out_dir`` (created when missing) for the block: FolderBusyError at once when another
    run holds it. Re-entrant within a process (the CLI holds it around a run and its report; the sweep inside
    takes it again)."""
    key = _key(out_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fds = _acquire(out, shard)
    _HELD[key] = [fds, 1]
    try:
        yield
    finally:
        del _HELD[key]
        for fd in fds:
            os.close(fd)


def run_in_progress(out_dir: str | os.PathLike[str]) -> str | None:
    """The holder (``pid 123 on host h, since T``) of a run writing into ``out_dir`` now, or None (no run, or
    the run is this process's own)."""
    path = Path(out_dir) / LOCK_FILE
    if _key(out_dir) in _HELD or not path.is_file() or path.is_symlink():
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if _try(fd, fcntl.LOCK_EX):
            return None
        return (_shard_holders(Path(out_dir)) or [holder(fd)])[0]
    finally:
        os.close(fd)
