"""Which model serves: slots on disk joined to the in-memory handle, with load-before-switch safety.

Owns the lifecycle the OTA issue drives: `load_current()` at startup (falling back to ``previous/`` if
``current/`` does not load), `load_candidate()` (stage, load, warm up; a failure moves the candidate
to ``broken/`` and the serving model is untouched), `promote()` (slot switch, then the RCU swap to the
already warm candidate) and `rollback()`. Blocking work (file copies, model loads) runs in the given
executor. Does not serve requests (`agent.inference.engine`) or speak gRPC.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np

from agent.errors import InferenceError, IntegrityError, ModelLoadError, SlotError
from agent.inference.handle import ModelHandle, ModelHolder, ModelMeta
from agent.inference.runtime import RuntimeLoader
from agent.inference.warmup import WARMUP_FILE, sample_bytes, warm_up
from agent.slots import CANDIDATE, CURRENT, PREVIOUS, SlotInfo, Slots

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


class ModelManager:
    """Keeps `holder` pointing at the model in the ``current`` slot."""

    def __init__(
        self, *, slots: Slots, holder: ModelHolder, loader: RuntimeLoader, executor: Executor
    ) -> None:
        self._slots = slots
        self._holder = holder
        self._loader = loader
        self._executor = executor
        self._candidate: ModelHandle | None = None
        self._lock = asyncio.Lock()

    @property
    def slots(self) -> Slots:
        return self._slots

    async def load_current(self) -> ModelMeta | None:
        """Recover the slots and serve ``current/`` (or roll back to ``previous/`` if it is broken).

        ``current/`` is re-hashed first, so bit rot that still loads is caught, not served.

        Returns:
            The model now serving, or None when no slot holds a loadable model.
        """
        async with self._lock:
            await self._blocking(self._slots.recover)
            for _ in range(2):
                if self._slots.read(CURRENT) is None:
                    return None
                try:
                    await self._blocking(lambda: self._slots.verify(CURRENT))
                    handle = await self._load_slot(CURRENT)
                except (ModelLoadError, SlotError, IntegrityError) as err:
                    logger.error("current model does not load: %s", err)
                    if self._slots.read(PREVIOUS) is None:
                        return None
                    await self._blocking(self._slots.rollback)
                    continue
                self._holder.swap(handle)
                return handle.meta
            return None

    async def load_candidate(
        self, artifact: Path, *, name: str, version: str, warmup: Mapping[str, np.ndarray] | None = None
    ) -> ModelMeta:
        """Stage `artifact` as the candidate, load it and run a warm-up inference.

        `warmup` is the release's warm-up sample (kept beside the model as ``warmup.npz``); without
        one the warm-up runs on zeros (see `agent.inference.warmup`).

        Raises:
            ModelLoadError: it does not load or warm up; it is moved to ``broken/``, serving is untouched.
                The message carries the real reason, also on a first install (nothing serving).
            SlotError: the disk failed.
        """
        async with self._lock:
            self._drop_candidate()
            await self._blocking(lambda: self._slots.stage_candidate(artifact, name=name, version=version))
            try:
                if warmup is not None:
                    data = sample_bytes(warmup)
                    await self._blocking(lambda: self._slots.add_file(CANDIDATE, WARMUP_FILE, data))
                handle = await self._load_slot(CANDIDATE)
                await self._blocking(lambda: warm_up(handle.runtime, warmup))
            except (InferenceError, SlotError) as err:
                reason = f"{type(err).__name__}: {err}"
                try:
                    await self._blocking(lambda: self._slots.refuse_candidate(reason))
                except SlotError as move_err:  # never let the bookkeeping hide why it was refused
                    logger.error("could not move the refused candidate to broken/: %s", move_err)
                logger.error("candidate refused name=%s version=%s reason=%s", name, version, reason)
                raise ModelLoadError(f"candidate {name}@{version} refused: {err}") from err
            self._candidate = handle
            return handle.meta

    async def promote(self) -> ModelMeta:
        """Switch the slots to the loaded candidate and swap it in without failing requests.

        Raises:
            SlotError: no loaded candidate, or the disk failed (serving is then unchanged).
        """
        async with self._lock:
            candidate = self._candidate
            if candidate is None:
                raise SlotError("no loaded candidate; call load_candidate first")
            await self._blocking(self._slots.promote)
            self._candidate = None
            meta = replace(candidate.meta, slot=CURRENT, artifact=self._slots.artifact_path(CURRENT))
            self._holder.swap(ModelHandle(candidate.runtime, meta))
            return meta

    async def rollback(self) -> ModelMeta:
        """Serve ``previous/`` again; the rolled-back model goes to ``broken/``.

        Raises:
            SlotError: nothing to roll back to.
            ModelLoadError: the previous model no longer loads (serving is unchanged).
        """
        async with self._lock:
            if self._slots.read(PREVIOUS) is None:
                raise SlotError("no previous model to roll back to")
            handle = await self._load_slot(PREVIOUS)
            await self._blocking(self._slots.rollback)
            meta = replace(handle.meta, slot=CURRENT, artifact=self._slots.artifact_path(CURRENT))
            self._holder.swap(ModelHandle(handle.runtime, meta))
            return meta

    def listing(self) -> dict[str, SlotInfo | None]:
        return self._slots.listing()

    async def _load_slot(self, slot: str) -> ModelHandle:
        info = self._slots.read(slot)
        if info is None:
            raise SlotError(f"slot {slot} is empty")
        artifact = self._slots.artifact_path(slot)
        runtime = await self._blocking(lambda: self._loader(artifact))
        meta = ModelMeta(
            name=info.name, version=info.version, slot=slot, artifact=artifact, sha256=info.sha256
        )
        return ModelHandle(runtime, meta)

    def _drop_candidate(self) -> None:
        if self._candidate is not None:
            self._candidate.retire()
            self._candidate = None

    async def _blocking(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
