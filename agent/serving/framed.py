"""Opt-in low-latency data plane: raw tensors in length-delimited frames on a second Unix socket.

Why: an empty gRPC call through Python grpcio costs ~460 µs on a 2-core box, and protobuf tensors
cost a copy each way. This socket carries raw tensors (`agent.serving.rawframe`: dtype, shape,
bytes; the answer names the model version) while ModelInfo, ListModels, streaming, Feedback and
every other call stay on gRPC. Same engine, same limits, same status codes.

Protocol v2 (one request in flight per connection, answers in order):
    request:  header(kind PREDICT | PREDICT_SHM | ATTACH_SHM) | meta | data
    response: header(status: gRPC status number, 0 = OK) | meta | data
              OK meta = model name, model version, output descriptors; error data = UTF-8 message
Each connection reads into one preallocated buffer (grown up to the frame limit), decodes tensors
as views of it and answers without a task per request when the model runs inline. For large
inputs a client attaches a shared-memory file (``/dev/shm/edgeloop-*``, `ATTACH_SHM`, which the
client may unlink once attached) and sends only descriptors pointing into it (`PREDICT_SHM`): the
socket is the doorbell. A frame over the limit is answered RESOURCE_EXHAUSTED and the connection
closed; a malformed frame, an unknown dtype or a tensor past its buffer is INVALID_ARGUMENT. A peer
speaking v1 (u32 length + PredictRequest) gets UNIMPLEMENTED in v1 framing, then the connection
closes. Owns only the framing and the segment mappings; predicting is `InferenceServicer`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import re
import struct
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import grpc

from agent.errors import InferenceError, InvalidInputError, RequestTooLargeError
from agent.inference.engine import Prediction
from agent.serving import rawframe
from agent.serving.servicer import InferenceServicer, status_for

logger = logging.getLogger(__name__)

_V1_RESPONSE = struct.Struct("<IB")
_SHM_DIR = Path("/dev/shm")  # noqa: S108 - POSIX shared memory, opened O_NOFOLLOW
_SHM_NAME = re.compile(r"^edgeloop-[A-Za-z0-9_.-]{1,64}$")
_INITIAL_BUFFER = 64 * 1024
UPGRADE_MESSAGE = (
    "this agent speaks framed protocol v2 (raw tensors); upgrade the client (agent.client) "
    "or use the gRPC socket"
)


def status_number(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class FramedServer:
    """asyncio Unix-socket server answering framed Predict calls through the servicer."""

    def __init__(self, servicer: InferenceServicer, socket_path: Path, *, max_frame_bytes: int) -> None:
        self._servicer = servicer
        self._path = socket_path
        self._max = max_frame_bytes
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            lambda: _Connection(self._servicer, self._max, self._connections), path=str(self._path)
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                conn.close()
            await self._server.wait_closed()
        self._path.unlink(missing_ok=True)


class _Connection(asyncio.BufferedProtocol):
    """One client: a preallocated receive buffer, the frame state, and its attached segment."""

    def __init__(self, servicer: InferenceServicer, max_frame: int, registry: set[_Connection]) -> None:
        self._servicer = servicer
        self._max = max_frame
        self._registry = registry
        self._buf = bytearray(_INITIAL_BUFFER)
        self._view = memoryview(self._buf)
        self._have = 0
        self._busy = False
        self._shm: mmap.mmap | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self._transport = None
        if self._shm is not None and not self._busy:
            self._shm.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._have == len(self._buf):  # a full buffer holding less than one frame: grow it
            self._grow(len(self._buf) * 2)
        return self._view[self._have :]

    def buffer_updated(self, nbytes: int) -> None:
        self._have += nbytes
        self._process()

    def _grow(self, size: int) -> None:
        bigger = bytearray(size)
        bigger[: self._have] = self._view[: self._have]
        self._buf, self._view = bigger, memoryview(bigger)

    def _process(self) -> None:
        while not self._busy and self._transport is not None and self._have >= 4:
            if self._view[:4] != rawframe.MAGIC:
                self._reply_v1_and_close()
                return
            if self._have < rawframe.HEADER.size:
                return
            _, kind, flags, count, meta_len, data_len = rawframe.HEADER.unpack_from(self._view)
            total = rawframe.HEADER.size + meta_len + data_len
            if meta_len > rawframe.MAX_META or total > self._max:
                limit = self._max
                self._reply_error(
                    RequestTooLargeError(f"frame of {total} bytes exceeds the limit of {limit}")
                )
                self.close()
                return
            if self._have < total:
                if total > len(self._buf):
                    self._grow(total)
                return
            self._frame(kind, flags, count, meta_len, total)

    def _frame(self, kind: int, flags: int, count: int, meta_len: int, total: int) -> None:
        start = rawframe.HEADER.size
        meta = self._view[start : start + meta_len]
        data = self._view[start + meta_len : total]
        try:
            if kind == rawframe.ATTACH_SHM:
                self._attach(meta)
                self._consumed(total)
                return
            if kind == rawframe.PREDICT_SHM:
                if self._shm is None:
                    raise InvalidInputError("malformed frame: PREDICT_SHM before ATTACH_SHM")
                data = memoryview(self._shm)
            elif kind != rawframe.PREDICT:
                raise InvalidInputError(f"malformed frame: unknown kind {kind}")
            tensors, _ = rawframe.unpack_tensors(meta, 0, count, data)
        except InferenceError as err:
            self._reply_error(err)
            self._consumed(total)
            return
        use_cache = bool(flags & rawframe.FLAG_USE_CACHE)
        self._drive(self._servicer.predict_arrays(tensors, use_cache=use_cache), total)

    def _drive(self, coro: Coroutine[Any, Any, Prediction], total: int) -> None:
        """Run the request now; only if it suspends (executor, batcher) does it become a task."""
        try:
            suspended = coro.send(None)
        except StopIteration as done:
            self._reply_prediction(done.value)
            self._consumed(total)
            return
        except InferenceError as err:
            self._reply_error(err)
            self._consumed(total)
            return
        except Exception as err:  # a bug must cost one answer, not the connection or the loop
            logger.exception("framed request failed")
            self._reply_error(InferenceError(f"internal error: {type(err).__name__}"))
            self._consumed(total)
            return
        self._busy = True  # the request's arrays view our buffer: read nothing more until it ends
        if self._transport is not None:
            self._transport.pause_reading()
        task = asyncio.get_running_loop().create_task(_resume(coro, suspended))
        task.add_done_callback(lambda t: self._finished(t, total))

    def _finished(self, task: asyncio.Task[Prediction], total: int) -> None:
        self._busy = False
        err = task.exception()
        if isinstance(err, InferenceError):
            self._reply_error(err)
        elif err is not None:
            logger.error("framed request failed: %r", err)
            self._reply_error(InferenceError(f"internal error: {type(err).__name__}"))
        else:
            self._reply_prediction(task.result())
        if self._transport is None:
            if self._shm is not None:
                self._shm.close()
            return
        self._consumed(total)
        self._transport.resume_reading()
        self._process()

    def _consumed(self, total: int) -> None:
        rest = self._have - total
        if len(self._buf) > _INITIAL_BUFFER and rest <= _INITIAL_BUFFER:  # give a large frame's memory back
            small = bytearray(_INITIAL_BUFFER)
            small[:rest] = self._view[total : self._have]
            self._buf, self._view = small, memoryview(small)
        elif rest:
            self._view[:rest] = self._view[total : self._have]
        self._have = rest

    def _attach(self, meta: memoryview) -> None:
        name, pos = rawframe.unpack_str(meta, 0)
        if pos + 8 > len(meta):
            raise InvalidInputError("malformed frame: ATTACH_SHM without a size")
        (size,) = struct.unpack_from("<Q", meta, pos)
        if not _SHM_NAME.match(name):
            raise InvalidInputError(f"malformed frame: shared memory name {name!r}")
        if size > self._max:
            raise RequestTooLargeError(f"shared memory of {size} bytes exceeds the limit of {self._max}")
        try:
            fd = os.open(_SHM_DIR / name, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as err:
            raise InvalidInputError(f"cannot open shared memory {name}: {err.strerror}") from err
        try:
            if os.fstat(fd).st_size < size or size == 0:
                raise InvalidInputError(f"shared memory {name} is smaller than {size} bytes")
            segment = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        if self._shm is not None:
            self._shm.close()
        self._shm = segment
        self._write([rawframe.header(0)])

    def _reply_prediction(self, prediction: Prediction) -> None:
        try:
            tensors, pieces, data_len = rawframe.pack_tensors(prediction.outputs.items())
        except InvalidInputError as err:  # an output dtype the wire cannot carry
            self._reply_error(InferenceError(str(err)))
            return
        names = rawframe.pack_str(prediction.meta.name) + rawframe.pack_str(prediction.meta.version)
        meta = names + tensors
        flags = rawframe.FLAG_CACHE_HIT if prediction.cache_hit else 0
        head = rawframe.header(
            0, flags=flags, count=len(prediction.outputs), meta_len=len(meta), data_len=data_len
        )
        self._write([head, meta, *pieces])

    def _reply_error(self, err: InferenceError) -> None:
        message = str(err).encode()
        self._write([rawframe.header(status_number(status_for(err)), data_len=len(message)), message])

    def _reply_v1_and_close(self) -> None:
        code = status_number(grpc.StatusCode.UNIMPLEMENTED)
        message = UPGRADE_MESSAGE.encode()
        self._write([_V1_RESPONSE.pack(len(message), code), message])
        self.close()

    def _write(self, pieces: list[Any]) -> None:
        if self._transport is not None:
            self._transport.write(b"".join(pieces))


async def _resume(coro: Coroutine[Any, Any, Prediction], suspended: Any) -> Prediction:
    """Finish a coroutine that was started by hand and suspended on `suspended`.

    The coroutine awaits futures through `Future.__await__`, which reads the result itself once
    resumed, so here we only wait for the future to settle and then step the coroutine again (as
    `asyncio.Task` does: clear the future's blocking flag, wait, resume).
    """
    while True:
        if suspended is None:
            await asyncio.sleep(0)
        else:
            suspended._asyncio_future_blocking = False
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await suspended
        try:
            suspended = coro.send(None)
        except StopIteration as done:
            result: Prediction = done.value
            return result
