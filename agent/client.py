"""`EdgeloopClient`: the tiny synchronous client applications on the device use.

Owns a gRPC channel to the agent's local inference API (Unix socket path or ``host:port``), the
optional framed fast path for Predict (`agent.serving.framed`), numpy in/out, and translating
errors into `InferenceError` subclasses with the server's message. Re-exports `LocalModel`
(`agent.local`), the in-process alternative that needs no socket. Does not retry, batch or cache.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import secrets
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import numpy as np

from agent.errors import (
    BackendCrashedError,
    InferenceError,
    InvalidInputError,
    NoModelError,
    RequestTooLargeError,
)
from agent.inference.signature import Signature
from agent.local import LocalModel, LocalPrediction
from agent.serving import codec, rawframe
from protos.edgeloop.v1 import inference_pb2 as pb
from protos.edgeloop.v1 import inference_pb2_grpc as pb_grpc

__all__ = ["ClientPrediction", "EdgeloopClient", "LocalModel", "LocalPrediction"]

logger = logging.getLogger(__name__)

_R = TypeVar("_R")
_SHM_DIR = Path("/dev/shm")  # noqa: S108 - POSIX shared memory, created O_EXCL 0600
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]

DEFAULT_SOCKET = Path("/run/edgeloop/inference.sock")

_ERRORS: dict[grpc.StatusCode, type[InferenceError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidInputError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RequestTooLargeError,
    grpc.StatusCode.UNAVAILABLE: NoModelError,
    grpc.StatusCode.INTERNAL: BackendCrashedError,
}


@dataclass(frozen=True)
class ClientPrediction:
    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str
    cache_hit: bool


class EdgeloopClient:
    """``EdgeloopClient(socket).predict(x) -> y``; also usable as a context manager."""

    def __init__(
        self,
        target: Path | str = DEFAULT_SOCKET,
        *,
        timeout_s: float = 30.0,
        fast_socket: Path | None = None,
        shm_min_bytes: int | None = 256 * 1024,
    ) -> None:
        """Connect lazily to a socket path (Path or "unix:...") or a "host:port" string.

        With `fast_socket` (the agent's framed data plane, raw tensors), Predict goes over it;
        everything else stays on gRPC. Requests carrying `shm_min_bytes` or more of input go through
        shared memory on that socket (None: never). Not shareable between threads for concurrent
        calls: use one client per thread.
        """
        self._framed = (
            _FramedChannel(fast_socket, timeout_s, shm_min_bytes) if fast_socket is not None else None
        )
        address = f"unix:{target}" if isinstance(target, Path) else target
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        )
        self._stub = pb_grpc.InferenceServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._timeout = timeout_s

    def predict(self, x: np.ndarray | Mapping[str, np.ndarray], *, use_cache: bool = False) -> np.ndarray:
        """Run one sample or a batch; returns the first output.

        Raises:
            InvalidInputError: the input does not match the model's signature (message names it).
            RequestTooLargeError: over the agent's size or batch limit.
            NoModelError: the agent has no model loaded or is unreachable.
            InferenceError: any other failure.
        """
        return next(iter(self.predict_all(x, use_cache=use_cache).values()))

    def predict_all(
        self, x: np.ndarray | Mapping[str, np.ndarray], *, use_cache: bool = False
    ) -> dict[str, np.ndarray]:
        """Like `predict` but returns every output by name."""
        return self.predict_full(x, use_cache=use_cache).outputs

    def predict_full(
        self, x: np.ndarray | Mapping[str, np.ndarray], *, use_cache: bool = False
    ) -> ClientPrediction:
        """Like `predict_all`, plus which model version answered and whether the cache did."""
        if self._framed is not None:
            return self._framed.predict(_pairs(x), use_cache)
        request = _request(x, use_cache)
        response = self._call(lambda: self._stub.Predict(request, timeout=self._timeout))
        return ClientPrediction(
            outputs={t.name: codec.tensor_from_proto(t) for t in response.outputs},
            model_name=response.model_name,
            model_version=response.model_version,
            cache_hit=response.cache_hit,
        )

    def predict_stream(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Stream frames (e.g. from a sensor); yields the first output of each, in order."""
        responses = self._stub.PredictStream(_request(f, False) for f in frames)
        try:
            for response in responses:
                yield codec.tensor_from_proto(response.outputs[0])
        except grpc.RpcError as err:
            raise _translate(err) from err

    def model_info(self) -> pb.ModelInfoResponse:
        """Name, version, slot, backend and signature of the serving model."""
        response: pb.ModelInfoResponse = self._call(
            lambda: self._stub.ModelInfo(pb.ModelInfoRequest(), timeout=self._timeout)
        )
        return response

    def signature(self) -> Signature:
        info = self.model_info()
        return Signature(
            inputs=tuple(codec.spec_from_proto(s) for s in info.inputs),
            outputs=tuple(codec.spec_from_proto(s) for s in info.outputs),
        )

    def list_models(self) -> pb.ListModelsResponse:
        """Slots, versions and serving stats."""
        response: pb.ListModelsResponse = self._call(
            lambda: self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout)
        )
        return response

    def close(self) -> None:
        self._channel.close()
        if self._framed is not None:
            self._framed.close()

    def __enter__(self) -> EdgeloopClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @staticmethod
    def _call(fn: Callable[[], _R]) -> _R:
        try:
            return fn()
        except grpc.RpcError as err:
            raise _translate(err) from err


class _FramedChannel:
    """One connection to the agent's framed Predict socket (protocol v2, `agent.serving.framed`).

    Sends descriptors plus the arrays' own buffers (`sendmsg`, no join), receives into one
    preallocated buffer and copies only the outputs out. Inputs of `shm_min_bytes` or more go
    through a shared-memory segment attached once per connection (the socket is the doorbell);
    if the agent cannot map it (e.g. another user without access), inputs go inline from then on.
    """

    def __init__(self, path: Path, timeout_s: float, shm_min_bytes: int | None) -> None:
        self._path = path
        self._timeout = timeout_s
        self._sock: socket.socket | None = None
        self._buf = bytearray(64 * 1024)
        self._view = memoryview(self._buf)
        self._shm_min = shm_min_bytes
        self._shm: _Segment | None = None

    def predict(self, pairs: list[tuple[str, np.ndarray]], use_cache: bool) -> ClientPrediction:
        flags = rawframe.FLAG_USE_CACHE if use_cache else 0
        size = sum(a.nbytes for _, a in pairs)
        try:
            sock = self._connect()
            if self._shm_min is not None and size >= self._shm_min and self._segment(sock, size):
                assert self._shm is not None
                meta, pieces, _ = rawframe.pack_tensors(pairs)
                rawframe.copy_into(self._shm.view, pieces)
                head = rawframe.header(
                    rawframe.PREDICT_SHM, flags=flags, count=len(pairs), meta_len=len(meta)
                )
                sock.sendall(head + meta)
            else:
                desc, pieces, data_len = rawframe.pack_tensors(pairs)
                head = rawframe.header(
                    rawframe.PREDICT, flags=flags, count=len(pairs), meta_len=len(desc), data_len=data_len
                )
                _send_all(sock, [head + desc, *pieces], len(head) + len(desc) + data_len)
            status, flags, count, answer, data = self._receive(sock)
        except OSError as err:
            self.close()
            raise NoModelError(f"UNAVAILABLE: agent socket {self._path}: {err}") from err
        if status:
            raise _status_error(status, bytes(data).decode(errors="replace"))
        name, pos = rawframe.unpack_str(answer, 0)
        version, pos = rawframe.unpack_str(answer, pos)
        tensors, _ = rawframe.unpack_tensors(answer, pos, count, data)
        return ClientPrediction(
            outputs={n: a.copy() for n, a in tensors},  # the buffer is reused by the next call
            model_name=name,
            model_version=version,
            cache_hit=bool(flags & rawframe.FLAG_CACHE_HIT),
        )

    def _segment(self, sock: socket.socket, size: int) -> bool:
        """Ensure an attached segment of at least `size` bytes; False: use inline frames."""
        if self._shm is not None and self._shm.size >= size:
            return True
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        segment = _Segment.create(max(size, 1 << 20))
        meta = rawframe.pack_str(segment.name) + struct.pack("<Q", segment.size)
        try:
            sock.sendall(rawframe.header(rawframe.ATTACH_SHM, meta_len=len(meta)) + meta)
            status, *_ = self._receive(sock)
        finally:
            segment.unlink()  # mapped on both sides now (or refused): the name is not needed
        if status == _TOO_LARGE:
            segment.close()
            raise _status_error(status, f"shared memory of {segment.size} bytes is over the agent's limit")
        if status:
            segment.close()
            logger.warning("agent refused shared memory (status %s); sending inputs inline", status)
            self._shm_min = None
            return False
        self._shm = segment
        return True

    def _receive(self, sock: socket.socket) -> tuple[int, int, int, memoryview, memoryview]:
        have = _recv_at_least(sock, self._view, 0, rawframe.HEADER.size)
        magic, status, flags, count, meta_len, data_len = rawframe.HEADER.unpack_from(self._view)
        if magic != rawframe.MAGIC:
            self.close()
            raise InferenceError(
                "FAILED_PRECONDITION: the agent's fast socket speaks framed protocol v1 (an older agent); "
                "upgrade the agent or drop fast_socket to use gRPC"
            )
        total = rawframe.HEADER.size + meta_len + data_len
        if total > len(self._buf):
            bigger = bytearray(total)
            bigger[:have] = self._view[:have]
            self._buf, self._view = bigger, memoryview(bigger)
        _recv_at_least(sock, self._view, have, total)
        start = rawframe.HEADER.size
        return (
            status,
            flags,
            count,
            self._view[start : start + meta_len],
            self._view[start + meta_len : total],
        )

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self._timeout)
            sock.connect(str(self._path))
            self._sock = sock
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._shm is not None:
            self._shm.close()
            self._shm = None


class _Segment:
    """A shared-memory file this client created (``/dev/shm/edgeloop-<pid>-<random>``), mapped rw."""

    def __init__(self, name: str, size: int, mapping: mmap.mmap) -> None:
        self.name = name
        self.size = size
        self._map = mapping
        self.view = memoryview(mapping)

    @classmethod
    def create(cls, size: int) -> _Segment:
        name = f"edgeloop-{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(_SHM_DIR / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            mapping = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        return cls(name, size, mapping)

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_SHM_DIR / self.name)

    def close(self) -> None:
        self.view.release()
        self._map.close()


def _send_all(sock: socket.socket, pieces: list[Any], total: int) -> None:
    sent = sock.sendmsg(pieces)
    if sent < total:  # rare: a large frame the kernel took in part
        sock.sendall(b"".join(bytes(p) for p in pieces)[sent:])


def _recv_at_least(sock: socket.socket, view: memoryview, have: int, want: int) -> int:
    while have < want:
        got = sock.recv_into(view[have:])
        if not got:
            raise ConnectionResetError("agent closed the connection")
        have += got
    return have


def _status_error(status: int, message: str) -> InferenceError:
    code = _CODES.get(status, grpc.StatusCode.UNKNOWN)
    return _ERRORS.get(code, InferenceError)(f"{code.name}: {message}")


def _pairs(x: np.ndarray | Mapping[str, np.ndarray]) -> list[tuple[str, np.ndarray]]:
    if isinstance(x, np.ndarray):
        return [("", x)]
    return list(x.items())


def _request(x: np.ndarray | Mapping[str, np.ndarray], use_cache: bool) -> pb.PredictRequest:
    if isinstance(x, np.ndarray):
        tensors = [codec.tensor_to_proto("", x)]
    else:
        tensors = [codec.tensor_to_proto(name, array) for name, array in x.items()]
    return pb.PredictRequest(inputs=tensors, use_cache=use_cache)


def _translate(err: grpc.RpcError) -> InferenceError:
    code = err.code() if isinstance(err, grpc.Call) else grpc.StatusCode.UNKNOWN
    details = err.details() if isinstance(err, grpc.Call) else str(err)
    return _ERRORS.get(code, InferenceError)(f"{code.name}: {details}")
