"""Micro-batching: concatenate concurrent requests along the batch axis and run them as one call.

Owns an asyncio queue, the batch-forming loop (take what is queued up to `max_batch` samples, optionally
wait up to `max_wait_s` for more) and splitting the outputs back per request. At most `max_inflight`
batches run at once, so requests arriving while a batch runs form the next, larger one (opportunistic
batching even with `max_wait_s=0`). Requests are grouped by model handle and by non-batch shape, so a
hot swap or variable sequence lengths never mix in one batch. Only models whose inputs are all batched
are concatenated: a request for a model with a non-batched input (a recurrent state, a 0-d scalar)
always runs alone, so one caller's state never reaches another's call (the engine does not even
queue those; this is the second guard). Does not validate inputs, retry, or restart backends (the
engine does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from agent.inference.handle import ModelHandle

logger = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
RunBatch = Callable[[ModelHandle, Arrays], Awaitable[Arrays]]


@dataclass
class _Item:
    handle: ModelHandle
    inputs: Arrays
    batch: int
    future: asyncio.Future[Arrays]

    def group(self) -> tuple[int, tuple[tuple[str, tuple[int, ...]], ...]]:
        shapes = tuple(sorted((k, v.shape[1:]) for k, v in self.inputs.items()))
        return id(self.handle), shapes


class MicroBatcher:
    """Forms batches from `submit()` calls and runs them through `run`."""

    def __init__(
        self, run: RunBatch, *, max_batch: int, max_wait_s: float = 0.0, max_inflight: int = 1
    ) -> None:
        self._run = run
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._slots = asyncio.Semaphore(max_inflight)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        self.batched_requests = 0

    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._form_batches())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def submit(self, handle: ModelHandle, inputs: Arrays, batch: int) -> Arrays:
        """Queue one validated request and wait for its slice of the batch's outputs."""
        future: asyncio.Future[Arrays] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(handle, inputs, batch, future))
        return await future

    async def _form_batches(self) -> None:
        while True:
            await self._slots.acquire()
            items = [await self._queue.get()]
            size = self._drain(items, items[0].batch)
            if self._max_wait_s > 0 and size < self._max_batch:
                deadline = asyncio.get_running_loop().time() + self._max_wait_s
                size = await self._wait_for_more(items, size, deadline)
            task = asyncio.get_running_loop().create_task(self._run_items(items))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _drain(self, items: list[_Item], size: int) -> int:
        while size < self._max_batch and not self._queue.empty():
            item = self._queue.get_nowait()
            items.append(item)
            size += item.batch
        return size

    async def _wait_for_more(self, items: list[_Item], size: int, deadline: float) -> int:
        loop = asyncio.get_running_loop()
        while size < self._max_batch and (remaining := deadline - loop.time()) > 0:
            try:
                item = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                break
            items.append(item)
            size = self._drain(items, size + item.batch)
        return size

    async def _run_items(self, items: list[_Item]) -> None:
        try:
            groups: dict[object, list[_Item]] = {}
            for item in items:
                groups.setdefault(item.group(), []).append(item)
            for group in groups.values():
                await self._run_group(group)
        finally:
            self._slots.release()

    async def _run_alone(self, item: _Item) -> None:
        try:
            _resolve(item.future, await self._run(item.handle, item.inputs))
        except Exception as err:  # handed to the waiting request, which decides (retry/report)
            if not item.future.done():
                item.future.set_exception(err)

    async def _run_group(self, group: list[_Item]) -> None:
        self.batches += 1
        self.batched_requests += len(group)
        if len(group) == 1 or not group[0].handle.runtime.signature.dynamic_batch:
            for item in group:
                await self._run_alone(item)
            return
        try:
            names = list(group[0].inputs)
            joined = {n: np.concatenate([it.inputs[n] for it in group]) for n in names}
            outputs = await self._run(group[0].handle, joined)
            cuts = np.cumsum([it.batch for it in group])[:-1]
            parts = {n: np.split(array, cuts) for n, array in outputs.items()}
            for index, item in enumerate(group):
                _resolve(item.future, {n: chunks[index] for n, chunks in parts.items()})
        except Exception as err:  # handed to each waiting request, which decides (retry/report)
            for item in group:
                if not item.future.done():
                    item.future.set_exception(err)


def _resolve(future: asyncio.Future[Arrays], outputs: Arrays) -> None:
    if not future.done():
        future.set_result(outputs)
