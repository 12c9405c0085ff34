"""Streams opening together (a reconnect storm in small), against a real in-process server.

Every stream is authenticated against the registry and pushed its DesiredState before anything
else; the device row that authentication read is the one the first push is built from, and the
reads of concurrent streams are batched (grpc_api/auth.py DeviceLookup): fewer device reads than
streams, where there were two per stream before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from sqlalchemy import Engine, event

from protos.edgeloop.v1 import device_pb2_grpc
from tests.helpers.inproc import DeviceCreds, LiveServer, enroll, live, prepare, report

STREAMS = 40


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    settings, tokens = prepare(tmp_path / "srv")
    yield from live(settings, tokens)


def _device_reads(engine: Engine) -> list[str]:
    seen: list[str] = []
    lock = threading.Lock()

    @event.listens_for(engine, "before_cursor_execute")
    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        s = " ".join(statement.split())
        if s.upper().startswith("SELECT") and "FROM device WHERE device.id" in s:
            with lock:
                seen.append(s)

    return seen


async def _open_all(server: LiveServer, creds: list[DeviceCreds]) -> list[list[str]]:
    """Open every stream at once; each sends a report and reads until its ack."""

    async def one(c: DeviceCreds) -> list[str]:
        ch_creds = grpc.ssl_channel_credentials(
            c.ca_pem, private_key=c.key_pem, certificate_chain=c.chain_pem
        )
        async with grpc.aio.secure_channel(
            server.device_target, ch_creds, options=[("grpc.use_local_subchannel_pool", 1)]
        ) as ch:
            call = device_pb2_grpc.DeviceServiceStub(ch).Sync()  # type: ignore[no-untyped-call]
            await call.write(report(c.device_id))
            kinds: list[str] = []
            while "report_ack" not in kinds:
                msg = await asyncio.wait_for(call.read(), 30)
                assert msg is not grpc.aio.EOF
                kinds.append(msg.WhichOneof("msg"))
                if kinds[-1] == "desired":
                    assert msg.desired.generation >= 1
            await call.done_writing()
            return kinds

    return await asyncio.gather(*(one(c) for c in creds))


def test_streams_opened_together_are_authenticated_with_batched_reads(
    server: LiveServer, tmp_path: Path
) -> None:
    creds = [enroll(server, f"storm-{i:03d}", server.bootstrap_token(), tmp_path) for i in range(STREAMS)]
    reads = _device_reads(server.client.app.state.engine)  # type: ignore[attr-defined]

    sessions = asyncio.run(_open_all(server, creds))

    # Before: one read to authenticate and another to build the first DesiredState, per stream.
    assert 0 < len(reads) < STREAMS, f"{len(reads)} device reads for {STREAMS} streams"
    assert any(" IN (" in r for r in reads)
    # The DesiredState built from the authenticated row goes out before anything else.
    assert all(kinds[0] == "desired" and kinds[-1] == "report_ack" for kinds in sessions)
