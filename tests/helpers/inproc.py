"""An in-process fleet server (TestClient runs the lifespan, so both gRPC ports are live) and
small synchronous gRPC device clients for protocol-level tests."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from fastapi.testclient import TestClient

from agent.identity import IdentityStore
from fleet_server.crud.tokens import create_bootstrap_token, create_operator_token
from fleet_server.db import make_engine, session_scope
from fleet_server.main import create_app
from fleet_server.migrate import upgrade
from fleet_server.models import BootstrapTokenCreate
from fleet_server.pki import FleetCA
from fleet_server.security import Role
from fleet_server.settings import Settings
from protos.edgeloop.v1 import device_pb2 as pb
from protos.edgeloop.v1 import device_pb2_grpc


@dataclass
class LiveServer:
    settings: Settings
    client: TestClient
    tokens: dict[str, str]

    @property
    def enroll_target(self) -> str:
        return f"localhost:{self.client.app.state.grpc_ports['enroll']}"  # type: ignore[attr-defined]

    @property
    def device_target(self) -> str:
        return f"localhost:{self.client.app.state.grpc_ports['device']}"  # type: ignore[attr-defined]

    @property
    def ca_pem(self) -> bytes:
        return (self.settings.pki_dir / "ca.pem").read_bytes()

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def bootstrap_token(self, *, labels: dict[str, str] | None = None, profile: str = "") -> str:
        engine = make_engine(self.settings.resolved_database_url())
        with session_scope(engine) as s:
            _, token = create_bootstrap_token(
                session=s, spec=BootstrapTokenCreate(labels=labels or {}, profile=profile), created_by="test"
            )
        engine.dispose()
        return token


def prepare(data_dir: Path, database_url: str = "", **overrides: Any) -> tuple[Settings, dict[str, str]]:
    settings = Settings(
        data_dir=data_dir, database_url=database_url, enroll_port=0, device_port=0, **overrides
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    FleetCA.create(settings.pki_dir)
    engine = make_engine(settings.resolved_database_url())
    upgrade(engine)
    tokens = {}
    with session_scope(engine) as s:
        for role in Role:
            _, tokens[role.value] = create_operator_token(session=s, name=f"{role.value}-user", role=role)
    engine.dispose()
    return settings, tokens


@dataclass
class DeviceCreds:
    device_id: str
    key_pem: bytes
    chain_pem: bytes
    ca_pem: bytes


def enroll(
    server: LiveServer, device_id: str, token: str, tmp: Path, profile: str = "generic-x86"
) -> DeviceCreds:
    store = IdentityStore(tmp / device_id)
    key = store.load_or_create_key()
    with grpc.secure_channel(server.enroll_target, grpc.ssl_channel_credentials(server.ca_pem)) as ch:
        resp = device_pb2_grpc.DeviceServiceStub(ch).Enroll(
            pb.EnrollRequest(
                bootstrap_token=token,
                csr_pem=store.make_csr(key, device_id),
                device_id=device_id,
                profile=profile,
                agent_version="test",
            ),
            timeout=10,
        )
    return DeviceCreds(
        device_id, store.key_path.read_bytes(), resp.certificate_chain_pem, resp.ca_certificate_pem
    )


def device_channel(server: LiveServer, creds: DeviceCreds | None) -> grpc.Channel:
    if creds is None:
        return grpc.secure_channel(server.device_target, grpc.ssl_channel_credentials(server.ca_pem))
    return grpc.secure_channel(
        server.device_target,
        grpc.ssl_channel_credentials(
            server.ca_pem, private_key=creds.key_pem, certificate_chain=creds.chain_pem
        ),
    )


class RawStream:
    """A Sync stream where the test decides every byte sent and reads responses one by one."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._out: queue.Queue[bytes | None] = queue.Queue()
        call = channel.stream_stream(
            "/edgeloop.v1.DeviceService/Sync",
            request_serializer=lambda b: b,
            response_deserializer=pb.SyncResponse.FromString,
        )
        self.responses = call(self._gen(), timeout=30)
        self._lock = threading.Lock()

    def _gen(self) -> Iterator[bytes]:
        while True:
            item = self._out.get()
            if item is None:
                return
            yield item

    def send(self, msg: pb.SyncRequest | bytes) -> None:
        self._out.put(msg if isinstance(msg, bytes) else msg.SerializeToString())

    def close(self) -> None:
        self._out.put(None)

    def next(self) -> pb.SyncResponse:
        return next(self.responses)  # type: ignore[no-any-return]

    def next_of(self, kind: str, limit: int = 50) -> pb.SyncResponse:
        for _ in range(limit):
            msg = self.next()
            if msg.WhichOneof("msg") == kind:
                return msg
        raise AssertionError(f"no {kind} in {limit} messages")


def report(device_id: str, seq: int = 1) -> pb.SyncRequest:
    return pb.SyncRequest(report=pb.DeviceReport(device_id=device_id, sequence=seq, agent_version="test"))


def telemetry(batch_id: int, seqs: list[int], payload: bytes = b"") -> pb.SyncRequest:
    return pb.SyncRequest(
        telemetry=pb.TelemetryBatch(
            batch_id=batch_id,
            records=[
                pb.TelemetryRecord(seq=s, timestamp_ms=s, kind="test", metrics={"v": s}, payload=payload)
                for s in seqs
            ],
        )
    )


def live(settings: Settings, tokens: dict[str, str]) -> Iterator[LiveServer]:
    with TestClient(create_app(settings)) as client:
        yield LiveServer(settings, client, tokens)


def operator_api(server: LiveServer) -> type:
    """A stand-in for `fleet_server.operator_cli.Api` that talks to the in-process server (the
    TestClient is not a socket): `monkeypatch.setattr(operator_cli, "Api", operator_api(server))`."""
    from fleet_server import operator_cli

    class InProcApi:
        def __init__(self, base_url: str, token: str, timeout_s: float = 30.0) -> None:
            self.headers = {"Authorization": f"Bearer {token}"}

        def request(self, method: str, path: str, **kwargs: Any) -> Any:
            resp = server.client.request(method, "/api/v1" + path, headers=self.headers, **kwargs)
            if resp.status_code >= 400:
                raise operator_cli.ApiError(resp.status_code, resp.json()["detail"])
            return resp.json()

    return InProcApi
