"""Follow the agent's slots from an app's process: verify and load whatever ``current/`` holds.

Owns `SlotFollower`: one `check()` reads the slot pointer (``slots.json``, replaced atomically by
the agent) and the ``current/`` record (``model.json``: name, version, artifact, sha256 — the
digest the agent verified against the signed TUF target before staging it). When the record names
another model than the one serving, the artifact is hashed through an open descriptor, compared
with the record, loaded with the agent's own loader, checked to be the same inode that was hashed,
warmed up and published through the `ModelHolder` (requests in flight finish on the old model).
A hash mismatch while the pointer and record stay put is tampering: the model is refused, the
serving one kept and the refusal remembered until the file changes. A mismatch that coincides with
an agent operation (pending pointer, new generation or record) is a race and is retried at the
next check. `run()` polls on a thread. Does not write to the slots (the agent owns them) or decide
anything about updates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import InferenceError, IntegrityError, SlotError
from agent.inference.handle import ModelHandle, ModelHolder, ModelMeta
from agent.inference.runtime import RuntimeLoader
from agent.inference.warmup import WARMUP_FILE, parse_sample, warm_up
from agent.slots import CURRENT, META, POINTER

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Record:
    name: str
    version: str
    artifact: str
    sha256: str


@dataclass(frozen=True)
class Refusal:
    """A model the app would not load, and why."""

    name: str
    version: str
    sha256: str
    reason: str


class _Raced(Exception):
    """The agent changed the slots while we read them; look again at the next check."""


class SlotFollower:
    """Keeps `holder` on the verified model of ``current/``; `check()` is safe from any thread."""

    def __init__(self, slots_root: Path, *, loader: RuntimeLoader, holder: ModelHolder) -> None:
        self._root = slots_root
        self._loader = loader
        self._holder = holder
        self._refused: tuple[_Record, tuple[int, ...]] | None = None
        self.refusals: list[Refusal] = []
        self.swaps = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def check(self) -> ModelMeta | None:
        """Look once; load and swap in a new current model if there is one.

        Returns:
            The model newly swapped in, or None when nothing changed (or a refusal/race happened).
        """
        with self._lock:  # the poller and `LocalModel.refresh()` may call at the same time
            return self._check()

    def _check(self) -> ModelMeta | None:
        pointer = self._pointer()
        if pointer is None:
            return None  # the agent is mid-operation: the slots are not settled
        record = self._record()
        if record is None:
            return None
        serving = self._holder.current
        if serving is not None and (serving.meta.sha256, serving.meta.version) == (
            record.sha256,
            record.version,
        ):
            return None
        path = self._root / CURRENT / record.artifact
        if self._refused is not None and self._refused[0] == record and self._refused[1] == _stat(path):
            return None  # still the same refused bytes
        try:
            handle = self._load(record, path, pointer)
        except _Raced:
            return None
        except IntegrityError as err:
            self._refuse(record, path, str(err))
            raise
        except (InferenceError, SlotError, OSError) as err:
            self._refuse(record, path, f"{type(err).__name__}: {err}")
            raise SlotError(f"current model {record.name}@{record.version} does not load: {err}") from err
        self._refused = None
        self._holder.swap(handle)
        self.swaps += 1
        logger.info("app follows the agent model=%s sha256=%s", handle.meta.key, record.sha256[:12])
        return handle.meta

    def reload(self, meta: ModelMeta) -> ModelHandle:
        """Load `meta`'s artifact again (a crashed backend), verified against the same digest.

        Raises:
            IntegrityError: the file is no longer the bytes `meta` names (the slots moved).
            InferenceError: it does not load.
        """
        record = _Record(meta.name, meta.version, meta.artifact.name, meta.sha256)
        pointer = self._pointer()
        try:
            return self._load(record, meta.artifact, -1 if pointer is None else pointer)
        except _Raced as err:
            raise IntegrityError(f"{meta.key}: the slots changed while restarting its backend") from err

    def run(self, interval_s: float) -> None:
        """Poll on a daemon thread until `stop()`; errors are logged (and kept in `refusals`)."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.check()
                except (IntegrityError, SlotError) as err:
                    logger.error("app refused the agent's current model: %s", err)
                except Exception:  # a poller must survive anything the disk throws at it
                    logger.exception("slot follower check failed")

        self._thread = threading.Thread(target=loop, name="edgeloop-slot-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _load(self, record: _Record, path: Path, pointer: int) -> ModelHandle:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError as err:
            raise _Raced() from err
        try:
            before = _fstat(fd)
            with os.fdopen(os.dup(fd), "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        finally:
            os.close(fd)
        if digest != record.sha256:
            self._settled(record, pointer)
            raise IntegrityError(
                f"{record.name}@{record.version}: {record.artifact} has sha256 {digest[:12]}, "
                f"the slot record says {record.sha256[:12]}"
            )
        runtime = self._loader(path)
        if _stat(path) != before:  # not the bytes we hashed any more
            runtime.close()
            self._settled(record, pointer)
            raise IntegrityError(f"{record.artifact} changed while it was being loaded")
        try:
            warm_up(runtime, _warmup_sample(path.parent / WARMUP_FILE))
        except InferenceError:
            runtime.close()
            raise
        meta = ModelMeta(record.name, record.version, CURRENT, path, record.sha256)
        return ModelHandle(runtime, meta)

    def _settled(self, record: _Record, pointer: int) -> None:
        """Raise `_Raced` when the agent moved the slots since `pointer` and `record` were read."""
        if self._pointer() != pointer or self._record() != record:
            raise _Raced()

    def _refuse(self, record: _Record, path: Path, reason: str) -> None:
        self._refused = (record, _stat(path))
        self.refusals.append(Refusal(record.name, record.version, record.sha256, reason))
        del self.refusals[:-32]

    def _pointer(self) -> int | None:
        """The settled generation, or None while an operation is pending."""
        try:
            raw = json.loads((self._root / POINTER).read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            return None  # unreadable for a moment: treat as unsettled
        if raw.get("pending"):
            return None
        generation = raw.get("generation", 0)
        return generation if isinstance(generation, int) else 0

    def _record(self) -> _Record | None:
        try:
            raw = json.loads((self._root / CURRENT / META).read_bytes())
            return _Record(str(raw["name"]), str(raw["version"]), str(raw["artifact"]), str(raw["sha256"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            logger.debug("current slot record unreadable: %s", err)
            return None


def _warmup_sample(path: Path) -> dict[str, Any] | None:
    """The release's warm-up sample beside the model (as the agent uses it), or None: zeros."""
    try:
        return dict(parse_sample(path.read_bytes()))
    except FileNotFoundError:
        return None
    except (OSError, InferenceError) as err:
        logger.warning("warm-up sample %s unusable, warming up on zeros: %s", path, err)
        return None


def _fstat(fd: int) -> tuple[int, ...]:
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _stat(path: Path) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
