"""A simulated fleet speaking the real device protocol, light enough for 1,000 devices in one process.

Each `SimDevice` is enrolled with a real certificate (`tests.helpers.inproc.enroll` against any
target with enroll_target/device_target/ca_pem) and holds one mutual-TLS `Sync` stream (grpc.aio,
all devices on one event loop in a background thread). It:

- sends a `DeviceReport` per window with the slot it serves (model name, version, sha256);
- reacts to a `DesiredState` assignment with a new deployment id by walking the agent's OTA state
  machine and reporting every transition as `ota` telemetry, JSON exactly as agent/ota/client.py
  writes it (downloading -> verifying -> staging -> golden_check -> shadowing -> switching ->
  watching -> committing -> committed; a model that does not load fails at staging with
  `stage_failed`, and the device keeps serving what it had);
- per window, sends one `model_metrics` record (a serialized `ModelMetricsWindow`, the contract in
  /work/notes/metrics_contract.md) whose confidence histogram, class counts and shadow agreement
  come from the *real* model it serves: `Behaviour` holds that model's top-1 probability and class
  on a pool of digits inputs (the held-out digits, plus the same with pixel noise), and each device
  draws its live inputs from that pool with its own class mix (Dirichlet) and noise level, so
  devices differ the way real sites do;
- goes silent on request (closes its stream and sends nothing more).

Owns the simulation; does not decide anything about rollouts (the server does).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from agent.ota.states import UpdateEvent as E
from agent.ota.states import UpdateState as S
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.inproc import DeviceCreds

logger = logging.getLogger(__name__)

NOISE_LEVELS = (0.0, 0.08, 0.16, 0.24)  # pixel noise (std, pixels in [0, 1]) per device
HIST_BINS = 10

# --------------------------------------------------------------- the contract's message


def _contract_message() -> type[Any]:
    """`ModelMetricsWindow` from protos when stream R1 has added it, else the same message built
    from the contract's field list in a private descriptor pool (identical bytes on the wire)."""
    real = getattr(pb, "ModelMetricsWindow", None)
    if real is not None:
        return real  # type: ignore[no-any-return]
    fields = [
        ("model_name", 1, "string"), ("model_version", 2, "string"), ("model_sha256", 3, "string"),
        ("deployment_id", 4, "string"), ("window_start_ms", 5, "int64"), ("window_s", 6, "uint32"),
        ("predictions", 7, "uint64"), ("errors", 8, "uint64"), ("confidence_hist", 9, "uint32*"),
        ("class_counts", 10, "uint32*"), ("confidence_sum", 11, "double"),
        ("confidence_sum_sq", 12, "double"), ("latency_p50_ms", 13, "double"),
        ("latency_p95_ms", 14, "double"), ("latency_sum_ms", 15, "double"),
        ("latency_sum_sq_ms", 16, "double"), ("latency_count", 17, "uint64"),
        ("drift_score", 18, "double"), ("shadow_agreement", 19, "double"), ("shadow_samples", 20, "uint32"),
    ]  # fmt: skip
    f = descriptor_pb2.FieldDescriptorProto
    types = {"string": f.TYPE_STRING, "int64": f.TYPE_INT64, "uint32": f.TYPE_UINT32,
             "uint64": f.TYPE_UINT64, "double": f.TYPE_DOUBLE}  # fmt: skip
    file = descriptor_pb2.FileDescriptorProto(
        name="simfleet_metrics.proto", package="edgeloop.v1", syntax="proto3"
    )
    msg = file.message_type.add(name="ModelMetricsWindow")
    for name, number, kind in fields:
        repeated = kind.endswith("*")
        msg.field.add(
            name=name,
            number=number,
            type=types[kind.rstrip("*")],
            label=f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL,
        )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("edgeloop.v1.ModelMetricsWindow"))


ModelMetricsWindow = _contract_message()

# --------------------------------------------------------------- what a model does on live inputs


@dataclass(frozen=True)
class Behaviour:
    """A real model's outputs on the input pool: what a device serving it reports."""

    name: str
    version: str
    sha256: str
    loads: bool
    conf: np.ndarray = field(repr=False)  # (levels, pool) top-1 probability
    cls: np.ndarray = field(repr=False)  # (levels, pool) top-1 class
    latency_ms: float = 0.4

    def agreement(self, other: Behaviour | None) -> float:
        if other is None or not other.loads or not self.loads:
            return -1.0
        return float((self.cls == other.cls).mean())


@dataclass(frozen=True)
class InputPool:
    x: np.ndarray  # (levels, pool, 1, 8, 8) float32
    y: np.ndarray  # (pool,) true class


def input_pool(x: np.ndarray, y: np.ndarray, seed: int = 0) -> InputPool:
    rng = np.random.default_rng(seed)
    xs = [np.clip(x + rng.normal(0, s, x.shape), 0, 1).astype(np.float32) for s in NOISE_LEVELS]
    return InputPool(np.stack(xs), y)


def behaviour(
    name: str, version: str, path: Path, pool: InputPool, run: Callable[[Path, np.ndarray], tuple[Any, Any]]
) -> Behaviour:
    """Profile the real model `path` on every input of the pool (`run` = rollout_models.profile)."""
    import hashlib

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    levels, n = pool.x.shape[:2]
    try:
        conf, cls = run(path, pool.x.reshape(levels * n, *pool.x.shape[2:]))
    except Exception:  # any load failure: this model does not load
        empty = np.zeros((levels, n))
        return Behaviour(name, version, sha, False, empty, empty.astype(int))
    return Behaviour(
        name, version, sha, True, np.asarray(conf).reshape(levels, n), np.asarray(cls).reshape(levels, n)
    )


@dataclass(frozen=True)
class Site:
    """One device's input stream: its noise level and class mix (a weight per pool input)."""

    level: int
    weights: np.ndarray = field(repr=False)  # (pool,) sampling probabilities
    rate: float  # predictions per second
    latency_factor: float


# Fleet-wide class frequencies of the live inputs: skewed as digit streams are (Benford's law for
# the digits 1-9, 0 as frequent as 4), so two swapped classes move the class mix by the difference
# of their frequencies (3 vs 8: 0.11 vs 0.05). Each device draws its own mix around it.
CLASS_PRIOR = np.array([0.087, 0.275, 0.161, 0.114, 0.087, 0.072, 0.061, 0.052, 0.047, 0.042])
CLASS_PRIOR = CLASS_PRIOR / CLASS_PRIOR.sum()


def make_site(pool: InputPool, rng: np.random.Generator, rate: float = 40.0) -> Site:
    mix = rng.dirichlet(40.0 * CLASS_PRIOR)
    w = mix[pool.y]
    return Site(
        int(rng.integers(len(NOISE_LEVELS))),
        w / w.sum(),
        float(rate * rng.uniform(0.6, 1.4)),
        float(rng.lognormal(0, 0.2)),
    )


def window_record(
    b: Behaviour, prev: Behaviour | None, site: Site, rng: np.random.Generator, *,
    deployment_id: str, start_ms: int, window_s: float,
) -> bytes:  # fmt: skip
    n = int(rng.poisson(site.rate * window_s))
    idx = rng.choice(site.weights.size, size=n, p=site.weights)
    conf, cls = b.conf[site.level, idx], b.cls[site.level, idx]
    lat = b.latency_ms * site.latency_factor * rng.lognormal(0, 0.25, n)
    agreement = b.agreement(prev)
    msg = ModelMetricsWindow(
        model_name=b.name, model_version=b.version, model_sha256=b.sha256, deployment_id=deployment_id,
        window_start_ms=start_ms, window_s=max(1, round(window_s)), predictions=n, errors=0,
        confidence_hist=np.bincount(np.minimum((conf * HIST_BINS).astype(int), HIST_BINS - 1),
                                    minlength=HIST_BINS).tolist(),
        class_counts=np.bincount(cls.astype(int), minlength=10).tolist(),
        confidence_sum=float(conf.sum()), confidence_sum_sq=float((conf * conf).sum()),
        latency_p50_ms=float(np.percentile(lat, 50)) if n else 0.0,
        latency_p95_ms=float(np.percentile(lat, 95)) if n else 0.0,
        latency_sum_ms=float(lat.sum()), latency_sum_sq_ms=float((lat * lat).sum()), latency_count=n,
        drift_score=-1.0, shadow_agreement=agreement, shadow_samples=64 if agreement >= 0 else 0,
    )  # fmt: skip
    return msg.SerializeToString()  # type: ignore[no-any-return]


# --------------------------------------------------------------- devices

_INSTALL = [  # (from, event, to) as the agent's machine walks them
    (S.IDLE, E.ASSIGNED, S.DOWNLOADING), (S.DOWNLOADING, E.DOWNLOADED, S.VERIFYING),
    (S.VERIFYING, E.VERIFIED, S.STAGING), (S.STAGING, E.STAGED, S.GOLDEN_CHECK),
    (S.GOLDEN_CHECK, E.GOLDEN_PASSED, S.SHADOWING), (S.SHADOWING, E.SHADOW_PASSED, S.SWITCHING),
    (S.SWITCHING, E.SWITCHED, S.WATCHING), (S.WATCHING, E.WATCH_PASSED, S.COMMITTING),
    (S.COMMITTING, E.COMMIT_DONE, S.COMMITTED),
]  # fmt: skip


@dataclass
class SimDevice:
    device_id: str
    creds: DeviceCreds
    site: Site = field(repr=False)
    serving: Behaviour | None = None
    previous: Behaviour | None = None
    deployment_id: str = ""
    generation: int = 0
    transition: int = 0
    seq: int = 0
    report_seq: int = 0
    silent: bool = False
    connected: bool = False
    assignments: list[tuple[str, str, str]] = field(default_factory=list)  # (release_id, version, deployment)
    outcomes: dict[str, str] = field(default_factory=dict)  # deployment id -> committed | failed
    ever_served: set[str] = field(default_factory=set)  # model versions
    windows_sent: int = 0


class SimFleet:
    """Runs every device's Sync loop on one asyncio loop in a background thread.

    `catalogue` maps a model version (as in `ModelAssignment.model_version`) to its `Behaviour`;
    an assignment of an unknown version fails at download with a detail saying so.
    """

    def __init__(
        self,
        device_target: str,
        ca_pem: bytes,
        devices: Sequence[SimDevice],
        catalogue: dict[str, Behaviour],
        *,
        window_s: float = 1.0,
        install_s: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.target, self.ca_pem = device_target, ca_pem
        self.devices = {d.device_id: d for d in devices}
        self.catalogue = catalogue
        self.window_s, self.install_s = window_s, install_s
        self._rng = np.random.default_rng(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="simfleet")
        self._tasks: dict[str, asyncio.Future[None]] = {}
        self._stop: asyncio.Event | None = None
        self._installs: set[asyncio.Future[None]] = set()

    # ---- control, from any thread

    def start(self, stagger_s: float = 0.002) -> None:
        self._thread.start()

        async def boot() -> None:
            self._stop = asyncio.Event()
            for i, dev in enumerate(self.devices.values()):
                self._tasks[dev.device_id] = asyncio.ensure_future(self._run(dev))
                if i % 20 == 19:
                    await asyncio.sleep(stagger_s * 20)

        asyncio.run_coroutine_threadsafe(boot(), self._loop).result(120)

    def silence(self, device_ids: Sequence[str]) -> None:
        """These devices close their stream and never speak again."""
        for d in device_ids:
            self.devices[d].silent = True

    def connected(self) -> int:
        return sum(d.connected for d in self.devices.values())

    def stop(self) -> None:
        async def halt() -> None:
            assert self._stop is not None
            self._stop.set()
            for t in self._tasks.values():
                t.cancel()
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(halt(), self._loop).result(60)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    # ---- one device

    async def _run(self, dev: SimDevice) -> None:
        rng = np.random.default_rng(int(self._rng.integers(2**32)) ^ hash(dev.device_id) % 2**32)
        await asyncio.sleep(float(rng.uniform(0, self.window_s)))  # devices' windows are not aligned
        while not dev.silent:
            try:
                await self._session(dev, rng)
            except (TimeoutError, grpc.aio.AioRpcError, ConnectionError) as err:
                logger.debug("%s: session ended: %s", dev.device_id, err)
            dev.connected = False
            if dev.silent:
                return
            await asyncio.sleep(0.5 + float(rng.uniform(0, 0.5)))

    async def _session(self, dev: SimDevice, rng: np.random.Generator) -> None:
        creds = grpc.ssl_channel_credentials(self.ca_pem, private_key=dev.creds.key_pem,
                                             certificate_chain=dev.creds.chain_pem)  # fmt: skip
        async with grpc.aio.secure_channel(self.target, creds) as channel:
            call = channel.stream_stream(
                "/edgeloop.v1.DeviceService/Sync",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=pb.SyncResponse.FromString,
            )()  # type: ignore[call-arg]
            lock = asyncio.Lock()

            async def send(msg: pb.SyncRequest) -> None:
                async with lock:
                    await call.write(msg)

            await send(self._report(dev))
            reader = asyncio.ensure_future(self._read(dev, call, send, rng))
            dev.connected = True
            try:
                while not dev.silent:
                    start_ms = int(time.time() * 1000)
                    await asyncio.sleep(self.window_s)
                    if dev.silent or reader.done():
                        break
                    await send(self._report(dev))
                    if dev.serving is not None and dev.serving.loads:
                        payload = window_record(dev.serving, dev.previous, dev.site, rng,
                                                deployment_id=dev.deployment_id, start_ms=start_ms,
                                                window_s=self.window_s)  # fmt: skip
                        await send(self._telemetry(dev, "model_metrics", payload))
                        dev.windows_sent += 1
            finally:
                reader.cancel()
                call.cancel()
            if reader.done() and not reader.cancelled() and reader.exception() is not None:
                raise reader.exception()  # type: ignore[misc]

    async def _read(
        self, dev: SimDevice, call: Any, send: Callable[..., Any], rng: np.random.Generator
    ) -> None:
        async for resp in call:
            if resp.WhichOneof("msg") != "desired" or dev.silent:
                continue
            desired = resp.desired
            if desired.generation < dev.generation:
                continue
            dev.generation = desired.generation
            for a in desired.models:
                if a.deployment_id and a.deployment_id != dev.deployment_id:
                    dev.deployment_id = a.deployment_id
                    dev.assignments.append((a.release_id, a.model_version, a.deployment_id))
                    task = asyncio.ensure_future(self._install(dev, a, send, rng))
                    self._installs.add(task)
                    task.add_done_callback(self._installs.discard)

    async def _install(
        self, dev: SimDevice, a: Any, send: Callable[..., Any], rng: np.random.Generator
    ) -> None:
        target = self.catalogue.get(a.model_version)
        steps = _INSTALL
        detail, failed_at = "", None
        if target is None:
            failed_at, detail = 1, f"simulator: unknown model version {a.model_version!r}"
        elif not target.loads:
            failed_at, detail = 3, "load failed: INVALID_PROTOBUF (simulated from the real artifact)"
        for i, (src, event, dst) in enumerate(steps):
            if dev.silent or dev.deployment_id != a.deployment_id:
                return
            if failed_at is not None and i == failed_at:
                fail_event = {1: E.DOWNLOAD_FAILED, 3: E.STAGE_FAILED}[failed_at]
                await send(self._ota(dev, a, src, fail_event, S.FAILED, detail))
                dev.outcomes[a.deployment_id] = "failed"
                return
            await asyncio.sleep(self.install_s / len(steps) * float(rng.uniform(0.5, 1.5)))
            if dst == S.WATCHING and target is not None:
                dev.previous, dev.serving = dev.serving, target
                dev.ever_served.add(target.version)
            await send(self._ota(dev, a, src, event, dst, ""))
        dev.outcomes[a.deployment_id] = "committed"
        await send(self._report(dev))

    # ---- messages

    def _report(self, dev: SimDevice) -> pb.SyncRequest:
        dev.report_seq += 1
        slots = []
        if dev.serving is not None:
            b = dev.serving
            slots.append(
                pb.SlotState(slot="default", model_name=b.name, model_version=b.version, sha256=b.sha256)
            )
        return pb.SyncRequest(
            report=pb.DeviceReport(
                device_id=dev.device_id, sequence=dev.report_seq, timestamp_ms=int(time.time() * 1000),
                agent_version="simfleet", profile="generic-x86", applied_generation=dev.generation,
                slots=slots, health=pb.HEALTH_OK,
            )
        )  # fmt: skip

    def _telemetry(
        self, dev: SimDevice, kind: str, payload: bytes, metrics: dict[str, float] | None = None
    ) -> pb.SyncRequest:
        dev.seq += 1
        rec = pb.TelemetryRecord(seq=dev.seq, timestamp_ms=int(time.time() * 1000), kind=kind,
                                 metrics=metrics or {}, payload=payload)  # fmt: skip
        return pb.SyncRequest(telemetry=pb.TelemetryBatch(batch_id=dev.seq, records=[rec]))

    def _ota(self, dev: SimDevice, a: Any, src: S, event: E, dst: S, detail: str) -> pb.SyncRequest:
        dev.transition += 1
        release_seq = int(a.release_id) if a.release_id.isdigit() and len(a.release_id) < 19 else 0
        payload = json.dumps({
            "deployment_id": a.deployment_id, "release_seq": release_seq, "transition": dev.transition,
            "from": str(src), "to": str(dst), "event": str(event), "detail": detail,
        }).encode()  # fmt: skip
        return self._telemetry(dev, "ota", payload, {"transition": float(dev.transition)})


# --------------------------------------------------------------- setting a fleet up


def enroll_fleet(
    target: Any,
    tokens: Sequence[str],
    ids: Sequence[str],
    workdir: Path,
    pool: InputPool,
    *,
    seed: int = 0,
    rate: float = 40.0,
    workers: int = 4,
) -> list[SimDevice]:
    """Enroll `ids` with one bootstrap token each (real CSR, real certificate) and give each a site."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.helpers.inproc import enroll

    with ThreadPoolExecutor(workers) as ex:
        creds = list(ex.map(lambda it: enroll(target, it[0], it[1], workdir), zip(ids, tokens, strict=True)))
    rng = np.random.default_rng(seed)
    return [SimDevice(c.device_id, c, make_site(pool, rng, rate)) for c in creds]


# --------------------------------------------------------------- operator side (REST of a server process)

HALTED = frozenset({"paused", "rolling_back", "rolled_back", "aborted"})
ENDED = frozenset({"completed", "aborted", "rolled_back"})


def publish(
    api: Any,
    artifact: Path,
    version: str,
    golden: Path,
    threshold: float = 0.7,
    shadow_min_agreement: float | None = None,
    device_gates: dict[str, float] | None = None,
) -> int:
    """Publish `artifact` as a release of model `digits` (an httpx client on /api/v1)."""
    blob = api.put("/ota/blobs", content=artifact.read_bytes())
    blob.raise_for_status()
    gold = api.put("/ota/blobs", content=golden.read_bytes())
    gold.raise_for_status()
    body = {
        "model_name": "digits", "model_version": version, "artifact_sha256": blob.json()["sha256"],
        "golden_sha256": gold.json()["sha256"], "golden_threshold": threshold,
        "gates": {"watch_s": 0.3, "shadow_window_s": 1.0},
    }  # fmt: skip
    if shadow_min_agreement is not None:
        body["gates"]["min_agreement"] = shadow_min_agreement
    body["gates"].update(device_gates or {})
    resp = api.post("/releases", json=body)
    resp.raise_for_status()
    return int(resp.json()["seq"])


def deploy_and_wait(api: Any, seq: int, device_ids: Sequence[str], timeout_s: float = 300) -> list[Any]:
    """A plain deployment (no rollout) to `device_ids`, waited for until every row is terminal."""
    resp = api.post(f"/releases/{seq}/deployments", json={"device_ids": list(device_ids)}, timeout=timeout_s)
    resp.raise_for_status()
    dep = resp.json()["deployment_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = api.get(f"/deployments/{dep}", timeout=60).json()
        if rows and all(r["state"] in ("committed", "failed", "rolled_back", "refused") for r in rows):
            return list(rows)
        time.sleep(0.5)
    raise AssertionError(f"deployment {dep} of release {seq} did not end in {timeout_s}s")


def gate_config(window_s: float, **overrides: Any) -> dict[str, Any]:
    """Gates for short report windows: minimum sample 3 windows, a look per window."""
    cfg: dict[str, Any] = {
        "max_failure_rate": 0.1, "silent_timeout_s": 20 * window_s, "rollback_timeout_s": 60 * window_s,
        "alpha": 0.05, "min_devices": 5, "min_samples": 200, "min_window_s": 3 * window_s,
        "look_interval_s": window_s, "max_looks": 20, "max_wait_s": 30 * window_s, "on_no_data": "pass",
    }  # fmt: skip
    cfg.update(overrides)
    return cfg


def wait_rollout(api: Any, rollout_id: str, until: frozenset[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        resp = api.get(f"/rollouts/{rollout_id}", timeout=60)
        resp.raise_for_status()
        last = resp.json()
        if last["state"] in until:
            return last
        time.sleep(0.25)
    raise AssertionError(f"rollout {rollout_id} not in {sorted(until)} after {timeout_s}s: {last}")
