"""Port between the update client and the serving stack, and its adapter over `InferenceService`.

`ServingPort` is everything the commit protocol needs from serving: what is serving now, load a
candidate (stage + load + warm-up on the release's sample or zeros, via the inference service), add
a file beside it (the release's drift reference), run current or candidate on given inputs for the
gates, promote, roll back, live inputs for the shadow run, error counters for the watch window, and
which model files the device holds (delta sources). The adapter loads its own runtime of a slot's
artifact for gate evaluation (released after the gates) so the serving path is never touched before
the switch. Does not decide anything (`client.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.inference.runtime import InferenceRuntime, RuntimeLoader
from agent.inference.signature import Signature
from agent.serving.server import InferenceService
from agent.slots import CANDIDATE, CURRENT, PREVIOUS, LocalSlotFS, Slots

logger = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class ServingModel:
    name: str
    version: str
    sha256: str


class ServingPort(Protocol):
    def serving(self) -> ServingModel | None: ...

    async def load_candidate(
        self, artifact: Path, *, name: str, version: str, warmup: Batch | None = None
    ) -> None:
        """Stage, load and warm up `artifact` as the candidate (on `warmup`, else on zeros).

        Raises:
            ModelLoadError: it does not load or warm up (serving untouched).
            SlotError: the disk failed.
        """
        ...

    def add_candidate_file(self, filename: str, data: bytes) -> None:
        """Write `filename` beside the staged candidate's artifact; it travels with the slot.

        Raises:
            SlotError: no candidate is staged, or the disk failed.
        """
        ...

    async def evaluate(
        self, slot: str, batches: list[Batch]
    ) -> tuple[list[dict[str, np.ndarray]], list[float]]:
        """Outputs and per-batch latency (s) of the model in `slot` ("candidate" or "current").

        Raises:
            InferenceError: the model failed on these inputs.
            SlotError: the slot is empty.
        """
        ...

    def release_evaluators(self) -> None: ...

    async def promote(self) -> None:
        """Switch to the loaded candidate.

        Raises:
            SlotError: no loaded candidate, or the disk failed (serving unchanged).
        """
        ...

    async def rollback(self) -> None:
        """Serve the previous model again.

        Raises:
            SlotError: nothing to roll back to.
            ModelLoadError: the previous model does not load.
        """
        ...

    def live_inputs(self) -> list[Batch]: ...

    def error_counts(self) -> tuple[int, int]:
        """(requests, errors) counted for the serving model since an arbitrary origin."""
        ...

    def held_models(self) -> list[tuple[Path, str]]:
        """(artifact path, sha256) of the models in the current and previous slots."""
        ...


def feed_for(signature: Signature, batch: Batch) -> Batch:
    """One golden/shadow sample as the model takes it: a non-batched input stored with a leading
    samples axis of 1 (a golden set's ``state`` row ``[1, 2, 1, 8]`` for ``[2, 1, 8]``) loses it."""
    feed = dict(batch)
    for spec in signature.inputs:
        array = feed.get(spec.name)
        if (
            array is not None
            and not spec.is_batched
            and array.ndim == len(spec.shape) + 1
            and array.shape[0] == 1
        ):
            feed[spec.name] = array[0]
    return feed


class InferenceServing:
    """`ServingPort` over a started `InferenceService`."""

    def __init__(self, service: InferenceService, *, slots_root: Path, loader: RuntimeLoader) -> None:
        self._service = service
        self._slots = Slots(LocalSlotFS(slots_root))
        self._loader = loader
        self._evaluators: dict[str, tuple[str, InferenceRuntime]] = {}

    def serving(self) -> ServingModel | None:
        meta = self._service.serving()
        return ServingModel(meta.name, meta.version, meta.sha256) if meta else None

    async def load_candidate(
        self, artifact: Path, *, name: str, version: str, warmup: Batch | None = None
    ) -> None:
        await self._service.load_candidate(artifact, name=name, version=version, warmup=warmup)

    def add_candidate_file(self, filename: str, data: bytes) -> None:
        self._slots.add_file(CANDIDATE, filename, data)

    async def evaluate(
        self, slot: str, batches: list[Batch]
    ) -> tuple[list[dict[str, np.ndarray]], list[float]]:
        return await asyncio.to_thread(self._evaluate, slot, batches)

    def _evaluate(self, slot: str, batches: list[Batch]) -> tuple[list[dict[str, np.ndarray]], list[float]]:
        runtime = self._runtime(CANDIDATE if slot == "candidate" else CURRENT)
        outputs, latencies = [], []
        for batch in batches:
            feed = feed_for(runtime.signature, batch)
            started = time.perf_counter()
            outputs.append(runtime.run(feed))
            latencies.append(time.perf_counter() - started)
        return outputs, latencies

    def _runtime(self, slot: str) -> InferenceRuntime:
        info = self._slots.read(slot)
        path = self._slots.artifact_path(slot)
        sha = info.sha256 if info else ""
        cached = self._evaluators.get(slot)
        if cached is None or cached[0] != sha:
            if cached is not None:
                cached[1].close()
            self._evaluators[slot] = (sha, self._loader(path))
        return self._evaluators[slot][1]

    def release_evaluators(self) -> None:
        for _, runtime in self._evaluators.values():
            runtime.close()
        self._evaluators.clear()

    async def promote(self) -> None:
        self.release_evaluators()
        await self._service.promote()

    async def rollback(self) -> None:
        await self._service.rollback()

    def live_inputs(self) -> list[Batch]:
        return [s.inputs for s in self._service.drain_samples("ota-shadow")]

    def error_counts(self) -> tuple[int, int]:
        meta = self._service.serving()
        if meta is None:
            return 0, 0
        stats = self._service.stats_snapshot()
        prefix = f"inference.{meta.key}."
        return int(stats.get(prefix + "requests", 0)), int(stats.get(prefix + "errors", 0))

    def held_models(self) -> list[tuple[Path, str]]:
        held = []
        for slot in (CURRENT, PREVIOUS):
            info = self._slots.read(slot)
            if info is not None:
                held.append((self._slots.artifact_path(slot), info.sha256))
        return held
