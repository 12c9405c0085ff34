"""`FilesystemStore`: the artifact store as a folder (the default: ``<data_dir>/ota``).

Objects are files under the root at their key, so an existing data directory keeps working and
a shared volume can serve several replicas on one host. Writes go to a unique temporary file in the
destination folder, are fsynced, then renamed over the key (`put`) or hard-linked to it
(`put_if_absent`: ``link`` fails when the name exists, which makes the conditional create atomic
on a POSIX filesystem, including NFSv4). Temporary names start with ``.`` and end in ``.tmp``;
`list` skips them. Does not know what the objects are.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from fleet_server.artifacts.port import CHUNK, ArtifactNotFoundError, ObjectInfo, check_key


class FilesystemStore:
    """Objects as files below `root` (created on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return self.root.resolve().as_uri()

    def path(self, key: str) -> Path:
        """The file of `key` (it may not exist)."""
        return self.root / check_key(key)

    # ------------------------------------------------------------ reads

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ArtifactNotFoundError(f"no artifact {key}") from None

    def stat(self, key: str) -> ObjectInfo:
        path = self.path(key)
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise ArtifactNotFoundError(f"no artifact {key}") from None
        if not path.is_file():
            raise ArtifactNotFoundError(f"no artifact {key}")
        return ObjectInfo(key, st.st_size)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def open_range(self, key: str, start: int, end: int) -> Iterator[bytes]:
        try:
            fh = self.path(key).open("rb")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise ArtifactNotFoundError(f"no artifact {key}") from None
        return _stream(fh, start, end)

    def fetch_to(self, key: str, dest: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise ArtifactNotFoundError(f"no artifact {key}")
        dest.unlink(missing_ok=True)
        try:
            os.link(source, dest)  # objects are never modified in place: sharing the inode is safe
        except OSError:
            shutil.copyfile(source, dest)

    def list(self, prefix: str) -> Iterator[str]:
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder if folder else self.root
        if not base.is_dir():
            return
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    yield key

    # ------------------------------------------------------------ writes

    def put(self, key: str, data: bytes) -> None:
        tmp = self._write_tmp(key, lambda out: out.write(data))
        os.replace(tmp, self.path(key))

    def put_file(self, key: str, source: Path) -> None:
        tmp = self._write_tmp(key, lambda out: _copy(source, out))
        os.replace(tmp, self.path(key))

    def put_if_absent(self, key: str, data: bytes) -> bool:
        if self.exists(key):
            return False
        return self._link(self._write_tmp(key, lambda out: out.write(data)), key)

    def put_file_if_absent(self, key: str, source: Path) -> bool:
        if self.exists(key):
            return False
        return self._link(self._write_tmp(key, lambda out: _copy(source, out)), key)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def _write_tmp(self, key: str, write: Callable[[BinaryIO], object]) -> Path:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with tmp.open("wb") as out:
                write(out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _link(self, tmp: Path, key: str) -> bool:
        try:
            os.link(tmp, self.path(key))
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True


def _copy(source: Path, out: BinaryIO) -> None:
    with source.open("rb") as src:
        shutil.copyfileobj(src, out, CHUNK * 16)


def _stream(fh: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    with fh:
        fh.seek(start)
        left = end - start
        while left > 0:
            block = fh.read(min(CHUNK, left))
            if not block:
                return
            left -= len(block)
            yield block
