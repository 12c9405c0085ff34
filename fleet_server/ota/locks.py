"""The writer locks of the OTA repository: one writer at a time, in a process or across replicas.

Owns `ThreadLock` (one process), `OuterLock` (re-entrant per thread around a cross-process lock)
and its `flock` form `WriterLock` (replicas sharing a folder). A lock only makes write conflicts
rare: correctness rests on the repository's compare-and-swap commit (`metadata_store.py`). Does
not know TUF; the PostgreSQL advisory lock for replicas on a database is `signer.PgAdvisoryLock`.
"""

from __future__ import annotations

import fcntl
import os
import threading
from contextlib import AbstractContextManager
from pathlib import Path


class RepoLock(AbstractContextManager[None]):
    """Re-entrant per thread; one holder across the replicas it is shared with."""


class ThreadLock(AbstractContextManager[None]):
    """One writer at a time in this process (a store shared only by this process)."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *_: object) -> None:
        self._lock.release()


class OuterLock(AbstractContextManager[None]):
    """Re-entrant per thread around a cross-process lock taken on the outermost enter and released
    on the outermost exit (a deploy publishes under the lock it already holds). Subclasses say how
    the outer lock is taken (`_acquire_outer`) and dropped (`_release_outer`)."""

    def __init__(self) -> None:
        self._thread_lock = threading.RLock()
        self._depth = 0

    def _acquire_outer(self) -> None:
        raise NotImplementedError

    def _release_outer(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> None:
        self._thread_lock.acquire()
        try:
            if self._depth == 0:
                self._acquire_outer()
            self._depth += 1
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        try:
            self._depth -= 1
            if self._depth == 0:
                self._release_outer()
        finally:
            self._thread_lock.release()


class WriterLock(OuterLock):
    """One writer of the repository at a time, across threads *and* processes.

    Several server replicas on one host (or on a shared volume with working `flock`) sign into the
    same folder: every change re-reads the metadata from disk under this lock, so a version
    number is never issued twice. The exclusive `flock` on `path` is taken on the outermost acquire
    and released with it, and the kernel drops it if the process dies. The lock file lives beside
    the repository, never inside the served folder.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = None

    def _acquire_outer(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def _release_outer(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
