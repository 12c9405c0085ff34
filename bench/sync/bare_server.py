"""Baseline: a bare grpc.aio server with the same Sync method and mutual TLS that only counts
messages and acks each one (no parsing beyond protobuf, no auth lookup, no persistence)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc

from protos.edgeloop.v1 import device_pb2 as pb

COUNT = 0


async def sync(requests, context):  # type: ignore[no-untyped-def]
    global COUNT
    async for raw in requests:
        msg = pb.SyncRequest.FromString(raw)
        COUNT += 1
        yield pb.SyncResponse(report_ack=pb.ReportAck(sequence=msg.report.sequence)).SerializeToString()


async def main(pki: Path, port: int) -> None:
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 256 * 1024)])
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "edgeloop.v1.DeviceService", {"Sync": grpc.stream_stream_rpc_method_handler(sync)}
            ),
        )
    )
    creds = grpc.ssl_server_credentials(
        [
            (
                (pki / "server.key").read_bytes(),
                (pki / "server.pem").read_bytes() + (pki / "ca.pem").read_bytes(),
            )
        ],
        root_certificates=(pki / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", creds)
    await server.start()
    print("READY", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
