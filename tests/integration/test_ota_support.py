"""Shared pieces of the OTA tests (no tests here): real digits models exported to ONNX, an OTA
repository served over real loopback HTTP (uvicorn + Starlette StaticFiles with Range), and an
in-process agent (real InferenceService + OtaClient) with a list as its report sink."""

from __future__ import annotations

import asyncio
import functools
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from sqlmodel import Session
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from agent.inference.registry import ProfileLoader
from agent.ota.client import OtaClient, UpdateRetry
from agent.ota.fetcher import Downloader, HttpFetcher, RetryPolicy
from agent.ota.serving import InferenceServing
from agent.ota.store import RecordStore
from agent.ota.trust import Trust
from agent.ota.work import Work, WorkLimits
from agent.ports import SystemClock
from agent.profile import load_profile
from agent.reconcile import InstallModel
from agent.serving.server import InferenceService
from agent.state import DesiredState, ModelAssignment
from fleet_server.db import make_engine
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from fleet_server.ota.models import ReleaseCreate
from fleet_server.ota.releases import OtaService
from tests.helpers.net import free_port

__test__ = False


@dataclass(frozen=True)
class Models:
    v1: Path
    v2: Path  # head-only fine-tune of v1
    scrambled: Path  # v1 with the last layer permuted: loads fine, disagrees everywhere
    golden: Path  # npz: input:input, labels
    x_live: np.ndarray


@functools.cache
def models() -> Models:
    import torch

    from tests.fixtures.digits import load_digits_data, train_digits_cnn
    from tests.fixtures.models import export_onnx

    out = Path(tempfile.mkdtemp(prefix="edgeloop-ota-models-"))
    data = load_digits_data()
    model = train_digits_cnn(data, epochs=6)
    v1 = export_onnx(model, data, out / "v1.onnx")
    last = model.head[3]  # type: ignore[index]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in last.parameters():
        p.requires_grad_(True)
    opt = torch.optim.SGD(last.parameters(), lr=0.05)
    x, y = torch.from_numpy(data.x_train[:256]), torch.from_numpy(data.y_train[:256])
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    v2 = export_onnx(model, data, out / "v2.onnx")
    with torch.no_grad():
        last.weight.copy_(last.weight[torch.roll(torch.arange(10), 3)])
        last.bias.copy_(last.bias[torch.roll(torch.arange(10), 3)])
    scrambled = export_onnx(model, data, out / "scrambled.onnx")
    golden = out / "golden.npz"
    np.savez(golden, **{"input:input": data.x_test[:64], "labels": data.y_test[:64]})
    return Models(v1, v2, scrambled, golden, data.x_test[64:128])


@functools.cache
def drift_references() -> tuple[Path, Path]:
    """Two distinct `drift_reference.json` files for the digits models (as the compiler writes them)."""
    from agent.drift.reference import build_reference
    from tests.fixtures.digits import load_digits_data

    out = Path(tempfile.mkdtemp(prefix="edgeloop-ota-drift-"))
    data = load_digits_data()
    x = np.concatenate([data.x_train, data.x_test]).reshape(-1, 64).astype(np.float64)
    paths = []
    for tag in ("a", "b"):
        path = out / f"drift_reference_{tag}.json"
        path.write_bytes(build_reference(x, meta={"model": "digits", "tag": tag}).to_bytes())
        paths.append(path)
    return paths[0], paths[1]


class RepoHttp:
    """The repository folder served over loopback HTTP exactly like the fleet server's /ota mount."""

    def __init__(self, root: Path) -> None:
        self.port = free_port()
        app = Starlette(routes=[Mount("/ota", StaticFiles(directory=root))])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", log_config=None)
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ota"

    def __enter__(self) -> RepoHttp:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)


@dataclass
class FleetSide:
    ota: OtaService
    engine: Any
    http: RepoHttp

    def publish(
        self,
        artifact: Path,
        version: str,
        *,
        golden: Path | None = None,
        drift_reference: Path | None = None,
        **kw: Any,
    ) -> int:
        sha, _ = self._blob(artifact)
        gsha = self._blob(golden)[0] if golden else ""
        dsha = self._blob(drift_reference)[0] if drift_reference else ""
        spec = ReleaseCreate(
            model_name="digits", model_version=version, artifact_sha256=sha, golden_sha256=gsha,
            drift_reference_sha256=dsha, **kw,
        )  # fmt: skip
        with Session(self.engine) as s:
            seq = self.ota.publish(session=s, spec=spec, created_by="test").seq
        assert seq is not None
        return seq

    def _blob(self, path: Path) -> tuple[str, int]:
        upload = self.ota.new_upload()
        upload.write_bytes(path.read_bytes())
        return self.ota.adopt_blob(upload)

    def deploy(self, seq: int, *devices: str, apply_windows: list[dict[str, Any]] | None = None) -> str:
        with Session(self.engine) as s:
            for d in devices:
                if s.get(Device, d) is None:
                    s.add(Device(id=d))
            s.commit()
            return self.ota.deploy(
                session=s, release_seq=seq, device_ids=list(devices), apply_windows=apply_windows
            )


@functools.cache
def _loop() -> None:
    return None


def fleet_side(tmp: Path) -> Iterator[FleetSide]:
    tmp.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{tmp / 'fleet.db'}")
    upgrade(engine)
    ota = OtaService(tmp / "ota")
    with RepoHttp(ota.repo.root_dir) as http:
        yield FleetSide(ota, engine, http)
    engine.dispose()


@dataclass
class Reports:
    items: list[dict[str, Any]] = field(default_factory=list)

    def append(self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b"") -> int:
        import json

        self.items.append(json.loads(payload))
        return len(self.items)

    def chain(self, deployment_id: str) -> list[str]:
        return [r["to"] for r in self.items if r["deployment_id"] == deployment_id]


@dataclass
class Device_:
    client: OtaClient
    service: InferenceService
    serving: InferenceServing
    reports: Reports
    work: Work
    root: Path


async def start_device(
    tmp: Path,
    fleet: FleetSide,
    device_id: str = "dev-1",
    *,
    resources: tuple[int, int] = (1 << 40, 1 << 40),
    serving_wrapper: Any = None,
    base_url: str | None = None,
    retry: UpdateRetry | None = None,
    wall_clock: Any = None,
    window_poll_s: float = 60.0,
) -> Device_:
    profile = load_profile("generic-x86")
    loader = ProfileLoader(profile)
    root = tmp / device_id
    service = InferenceService(root / "slots", profile, root / "inference.sock", loader=loader)
    await service.start()
    serving = InferenceServing(service, slots_root=root / "slots", loader=loader)
    port = serving_wrapper(serving) if serving_wrapper else serving
    import urllib3

    pool = urllib3.PoolManager()
    work = Work(
        directory=root / "ota",
        downloader=Downloader(pool, policy=RetryPolicy(attempts=3, initial_s=0.01), sleep=lambda _: None),
        serving=port,
        resources=lambda: resources,
        limits=WorkLimits(profile="generic-x86", window_poll_s=window_poll_s),
        **({"wall_clock": wall_clock} if wall_clock is not None else {}),
    )
    trust = Trust(
        device_id=device_id,
        metadata_dir=root / "ota" / "metadata",
        base_url=base_url or fleet.http.base_url,
        fetcher=HttpFetcher(pool),
        bootstrap_root=fleet.ota.repo.metadata_dir / "1.root.json",
    )
    reports = Reports()
    client = OtaClient(
        trust=trust,
        work=work,
        store=RecordStore(root / "ota" / "update.json"),
        reports=reports,
        clock=SystemClock(),
        retry=retry or UpdateRetry(attempts=5, initial_s=0.02, max_s=0.1),
    )
    return Device_(client, service, serving, reports, work, root)


def push_desired(device: Device_, deployment_id: str, release_seq: int) -> None:
    """Hand the client the desired state the fleet server pushes for a new deployment."""
    assignment = ModelAssignment("default", "digits", "", str(release_seq), deployment_id)
    device.client.submit(
        [InstallModel(assignment)], DesiredState(generation=release_seq, models=(assignment,))
    )


async def check(device: Device_) -> None:
    await device.client.check_once(asyncio.Event())


def slot_files(root: Path) -> dict[str, list[str]]:
    slots = root / "slots"
    return (
        {p.name: sorted(x.name for x in p.iterdir()) for p in slots.iterdir() if p.is_dir()}
        if slots.exists()
        else {}
    )
