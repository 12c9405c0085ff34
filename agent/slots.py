"""Model slots on disk: ``current/ previous/ candidate/ broken/`` plus an atomically replaced pointer.

Owns the slot layout, staging a candidate, and the three multi-step transitions (promote, rollback,
refuse). Each transition is journaled: the pointer file ``slots.json`` first records the pending
operation (temp file, fsync, rename, fsync dir), then a list of directory renames runs, then the
pointer is cleared and its generation bumped. Every step is idempotent, so `recover()` after a power
loss at any instant finishes the operation (roll forward) and the slots are never half-switched.
All I/O goes through the small `SlotFS` port (`LocalSlotFS` here; tests use an in-memory fake that
cuts power after N operations). Does not load models: the serving layer decides what loads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from agent.errors import IntegrityError, SlotError

logger = logging.getLogger(__name__)

CURRENT, PREVIOUS, CANDIDATE, BROKEN = "current", "previous", "candidate", "broken"
SLOTS = (CURRENT, PREVIOUS, CANDIDATE, BROKEN)
POINTER = "slots.json"
META = "model.json"
STAGING = "candidate.staging"

# operation -> ordered (source, destination) renames; done once the last source is gone.
_PLANS: dict[str, tuple[tuple[str, str], ...]] = {
    "promote": ((CURRENT, PREVIOUS), (CANDIDATE, CURRENT)),
    "rollback": ((CURRENT, BROKEN), (PREVIOUS, CURRENT)),
    "refuse": ((CANDIDATE, BROKEN),),
}


class SlotFS(Protocol):
    """Port: the few filesystem operations slots need, relative to the slots root."""

    def exists(self, rel: str) -> bool: ...

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        ...

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace a file atomically and durably.

        Raises:
            SlotError: the write failed.
        """
        ...

    def copy_in(self, source: Path, rel: str) -> None:
        """Copy an external file to `rel` (parent dirs created) and fsync it.

        Raises:
            SlotError: the copy failed.
        """
        ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically rename a directory (dst must not exist) and fsync the root.

        Raises:
            SlotError: the rename failed.
        """
        ...

    def remove_tree(self, rel: str) -> None:
        """Delete a directory tree if it exists.

        Raises:
            SlotError: the removal failed.
        """
        ...

    def path(self, rel: str) -> Path: ...


@dataclass(frozen=True)
class SlotInfo:
    """What a slot holds (from its ``model.json``)."""

    slot: str
    name: str
    version: str
    artifact: str
    sha256: str
    reason: str = ""


class Slots:
    """The slot set of one device; not thread-safe (one owner: the inference service)."""

    def __init__(self, fs: SlotFS) -> None:
        self._fs = fs

    def recover(self) -> None:
        """Finish any operation a power loss interrupted; call once at startup."""
        pending = self._pointer().get("pending")
        if pending:
            logger.warning("finishing interrupted slot operation op=%s", pending)
            self._finish(str(pending))
        self._fs.remove_tree(STAGING)

    def read(self, slot: str) -> SlotInfo | None:
        raw = self._fs.read_bytes(f"{slot}/{META}")
        if raw is None:
            return None
        try:
            return SlotInfo(**{**json.loads(raw), "slot": slot})
        except (ValueError, TypeError) as err:
            raise SlotError(f"slot {slot} has an unreadable {META}: {err}") from err

    def listing(self) -> dict[str, SlotInfo | None]:
        return {slot: self.read(slot) for slot in SLOTS}

    def artifact_path(self, slot: str) -> Path:
        info = self.read(slot)
        if info is None:
            raise SlotError(f"slot {slot} is empty")
        return self._fs.path(f"{slot}/{info.artifact}")

    def verify(self, slot: str) -> SlotInfo:
        """Re-hash the slot's artifact against its recorded sha256 (bit rot, partial writes).

        Raises:
            SlotError: the slot is empty or unreadable.
            IntegrityError: the bytes on disk no longer match.
        """
        info = self.read(slot)
        if info is None:
            raise SlotError(f"slot {slot} is empty")
        path = self._fs.path(f"{slot}/{info.artifact}")
        try:
            actual = _sha256(path)
        except OSError as err:
            raise SlotError(f"cannot read {path}: {err}") from err
        if actual != info.sha256:
            raise IntegrityError(
                f"slot {slot}: {info.artifact} has sha256 {actual[:12]}, expected {info.sha256[:12]}"
            )
        return info

    def add_file(self, slot: str, filename: str, data: bytes) -> None:
        """Write a companion file (e.g. ``drift_reference.json``) beside the slot's artifact.

        It lives in the slot directory, so promote and rollback move it with its model.

        Raises:
            SlotError: the slot is empty, `filename` is not a plain name or would replace the
                artifact or ``model.json``, or the write failed.
        """
        info = self.read(slot)
        if info is None:
            raise SlotError(f"slot {slot} is empty")
        if "/" in filename or filename in ("", ".", "..", META, info.artifact):
            raise SlotError(f"{filename!r} cannot be added beside the model in slot {slot}")
        self._fs.write_atomic(f"{slot}/{filename}", data)

    @property
    def generation(self) -> int:
        return _generation(self._pointer())

    def stage_candidate(self, artifact: Path, *, name: str, version: str) -> SlotInfo:
        """Copy `artifact` into ``candidate/`` (via a staging dir renamed into place).

        Raises:
            SlotError: the artifact cannot be read or written.
        """
        try:
            digest = _sha256(artifact)
        except OSError as err:
            raise SlotError(f"cannot read artifact {artifact}: {err}") from err
        info = SlotInfo(slot=CANDIDATE, name=name, version=version, artifact=artifact.name, sha256=digest)
        self._fs.remove_tree(STAGING)
        self._fs.copy_in(artifact, f"{STAGING}/{artifact.name}")
        self._fs.write_atomic(f"{STAGING}/{META}", _meta_bytes(info))
        self._fs.remove_tree(CANDIDATE)
        self._fs.rename(STAGING, CANDIDATE)
        logger.info("staged candidate name=%s version=%s sha256=%s", name, version, digest[:12])
        return info

    def promote(self) -> SlotInfo:
        """candidate -> current, current -> previous.

        Raises:
            SlotError: there is no candidate, or the disk failed.
        """
        if self.read(CANDIDATE) is None:
            raise SlotError("no candidate to promote")
        return _current(self._run("promote"), "promote")

    def rollback(self) -> SlotInfo:
        """previous -> current, current -> broken.

        Raises:
            SlotError: there is no previous model, or the disk failed.
        """
        if self.read(PREVIOUS) is None:
            raise SlotError("no previous model to roll back to")
        return _current(self._run("rollback"), "rollback")

    def refuse_candidate(self, reason: str) -> None:
        """Move a candidate that failed to load or verify to ``broken/`` with the reason."""
        info = self.read(CANDIDATE)
        if info is None:
            return
        self._fs.write_atomic(f"{CANDIDATE}/{META}", _meta_bytes(info, reason=reason))
        self._run("refuse", need_current=False)  # a refused first install leaves nothing current

    def _run(self, op: str, *, need_current: bool = True) -> SlotInfo | None:
        before = self._pointer()
        self._write_pointer({**before, "pending": op})
        self._finish(op)
        current = self.read(CURRENT)
        logger.info("slot operation done op=%s generation=%s", op, self.generation)
        if current is None and need_current:
            raise SlotError(f"{op} left no current model")
        return current

    def _finish(self, op: str) -> None:
        plan = _PLANS[op]
        if self._fs.exists(plan[-1][0]):
            for src, dst in plan:
                if self._fs.exists(src):
                    self._fs.remove_tree(dst)
                    self._fs.rename(src, dst)
        pointer = self._pointer()
        self._write_pointer({"generation": _generation(pointer) + 1, "pending": None})

    def _pointer(self) -> dict[str, object]:
        raw = self._fs.read_bytes(POINTER)
        if raw is None:
            return {"generation": 0, "pending": None}
        try:
            value = json.loads(raw)
        except ValueError as err:
            raise SlotError(f"slot pointer {POINTER} is corrupt: {err}") from err
        return dict(value)

    def _write_pointer(self, value: dict[str, object]) -> None:
        self._fs.write_atomic(POINTER, json.dumps(value, sort_keys=True).encode())


def _current(info: SlotInfo | None, op: str) -> SlotInfo:
    if info is None:
        raise SlotError(f"{op} left no current model")
    return info


def _sha256(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _generation(pointer: dict[str, object]) -> int:
    value = pointer.get("generation", 0)
    return value if isinstance(value, int) else 0


def _meta_bytes(info: SlotInfo, *, reason: str = "") -> bytes:
    fields = asdict(info)
    fields.pop("slot")
    fields["reason"] = reason or info.reason
    return json.dumps(fields, sort_keys=True).encode()


class LocalSlotFS:
    """`SlotFS` on a real directory: temp file + fsync + rename + fsync dir for every replacement."""

    def __init__(self, root: Path) -> None:
        self._root = root
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SlotError(f"cannot create slots root {root}: {err}") from err

    def path(self, rel: str) -> Path:
        return self._root / rel

    def exists(self, rel: str) -> bool:
        return (self._root / rel).exists()

    def read_bytes(self, rel: str) -> bytes | None:
        try:
            return (self._root / rel).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as err:
            raise SlotError(f"cannot read {rel}: {err}") from err

    def write_atomic(self, rel: str, data: bytes) -> None:
        target = self._root / rel
        tmp = target.with_name(f".{target.name}.tmp")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
            _fsync_dir(target.parent)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise SlotError(f"cannot write {rel}: {err}") from err

    def copy_in(self, source: Path, rel: str) -> None:
        target = self._root / rel
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            with target.open("rb") as fh:
                os.fsync(fh.fileno())
            _fsync_dir(target.parent)
        except OSError as err:
            raise SlotError(f"cannot copy {source} into slots: {err}") from err

    def rename(self, src: str, dst: str) -> None:
        try:
            os.rename(self._root / src, self._root / dst)
            _fsync_dir(self._root)
        except OSError as err:
            raise SlotError(f"cannot rename slot {src} -> {dst}: {err}") from err

    def remove_tree(self, rel: str) -> None:
        try:
            shutil.rmtree(self._root / rel)
        except FileNotFoundError:
            return
        except OSError as err:
            raise SlotError(f"cannot remove {rel}: {err}") from err


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
