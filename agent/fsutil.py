"""Crash-safe file writes (temp file in the same directory, fsync, rename, fsync the directory) and
the data-directory lock that keeps a second agent process off the same state."""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from agent.errors import DataDirLockedError, StorageError


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace `path` with `data` so a crash leaves either the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


LOCK_NAME = "agent.lock"


class DataDirLock:
    """An exclusive `flock` on ``<data_dir>/agent.lock``, held until `release` or process exit.

    The kernel drops the lock when the process dies (even by SIGKILL), so a stale file never blocks
    a restart. The holder's pid is written into the file only to name it in the refusal.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or refuse at once.

        Raises:
            DataDirLockedError: another process holds it.
            StorageError: the data directory or the lock file cannot be created.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise StorageError(f"cannot create lock file {self.path}: {err}") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise DataDirLockedError(self.path.parent, holder) from None
        except OSError as err:
            os.close(fd)
            raise StorageError(f"cannot lock {self.path}: {err}") from err
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *_: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None
