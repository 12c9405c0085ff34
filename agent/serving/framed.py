"""Opt-in low-latency data plane: the same `PredictRequest`/`PredictResponse` as length-prefixed frames.

Why: an empty gRPC call through Python grpcio costs ~460 µs on a 2-core box, 3x the 150 µs budget
for the whole API; an asyncio Unix-socket round trip costs ~40 µs. So Predict is also offered on a
second socket with a trivial framing, while ModelInfo, ListModels, streaming and every other
feature stay on gRPC. Same messages, same engine, same limits and status codes.

Wire format (little-endian), one request in flight per connection, responses in order:
    request:  u32 length | PredictRequest bytes
    response: u32 length | u8 status (gRPC status code number; 0 = OK) | payload
              payload = PredictResponse bytes when status is 0, else a UTF-8 error message
A request longer than the limit is answered with RESOURCE_EXHAUSTED and the connection closed.
Owns only the framing; does not predict (`InferenceServicer.predict_message`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError

from agent.errors import InferenceError
from agent.serving.servicer import InferenceServicer, status_for
from protos.edgeloop.v1 import inference_pb2 as pb

logger = logging.getLogger(__name__)

REQUEST_HEADER = struct.Struct("<I")
RESPONSE_HEADER = struct.Struct("<IB")


def status_number(code: grpc.StatusCode) -> int:
    return int(code.value[0])


class FramedServer:
    """asyncio Unix-socket server answering framed Predict calls through the servicer."""

    def __init__(self, servicer: InferenceServicer, socket_path: Path, *, max_frame_bytes: int) -> None:
        self._servicer = servicer
        self._path = socket_path
        self._max = max_frame_bytes
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self._path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._connections):
                writer.close()
            await self._server.wait_closed()
        self._path.unlink(missing_ok=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        try:
            while True:
                (size,) = REQUEST_HEADER.unpack(await reader.readexactly(REQUEST_HEADER.size))
                if size > self._max:
                    message = f"request of {size} bytes exceeds the limit of {self._max} bytes"
                    _reply(writer, status_number(grpc.StatusCode.RESOURCE_EXHAUSTED), message.encode())
                    await writer.drain()
                    return
                status, payload = await self._answer(await reader.readexactly(size))
                _reply(writer, status, payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, body: bytes) -> tuple[int, bytes]:
        try:
            request = pb.PredictRequest.FromString(body)
        except DecodeError as err:
            return status_number(
                grpc.StatusCode.INVALID_ARGUMENT
            ), f"malformed PredictRequest: {err}".encode()
        try:
            response = await self._servicer.predict_message(request)
        except InferenceError as err:
            return status_number(status_for(err)), str(err).encode()
        return 0, response.SerializeToString()


def _reply(writer: asyncio.StreamWriter, status: int, payload: bytes) -> None:
    writer.write(RESPONSE_HEADER.pack(len(payload), status) + payload)
