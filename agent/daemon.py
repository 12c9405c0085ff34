"""Composition root of the agent process: builds every adapter and runs the loops.

`enroll_device()` performs one-time enrollment; `run_daemon()` holds the Sync session, produces
system telemetry, inference stats and live model metric windows (one `model_metrics` record per
serving model every `[metrics] window_s`) into the outbox and shuts down gracefully on
SIGTERM/SIGINT (stop producing, flush within the configured time, close the stream, exit 0).
Under systemd (`Type=notify`) it reports READY=1 once serving, WATCHDOG=1 from its event loop and
STOPPING=1 at shutdown (agent/systemd.py).

Owns what is built and started, and in which order. The telemetry producer loops it starts
(system readings, inference stats, model metric windows, drift monitoring) live in
agent/telemetry.py and are re-exported here under their old names; they receive the adapters
built here and construct none of the transport, OTA, federated or serving ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from agent import __version__
from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.identity import IdentityStore
from agent.outbox import TelemetryOutbox
from agent.ports import FleetConnector, SystemClock
from agent.state import DesiredState
from agent.statefile import StateFile
from agent.sync import ModelExecutor, Reconciler, SyncLoop
from agent.sysinfo import read_resources
from agent.systemd import SystemdNotifier, supervised
from agent.telemetry import (
    _DriftScores,
    _metrics_provenance,
    _monitor_drift,
    _produce,
    _report_inference,
    _report_model_metrics,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.federated.client import FederatedClient, FederatedLink
    from agent.identity import Identity
    from agent.inference.engine import ServingOptions
    from agent.ota.client import OtaClient
    from agent.ota.fetcher import OtaCredential
    from agent.profile import DeviceProfile
    from agent.serving.server import InferenceService

logger = logging.getLogger(__name__)


class _CredentialReconciler(Reconciler):
    """Hands every DesiredState's OTA token to the OTA fetchers before reconciling it: tokens are
    refreshed with the same generation, which reconcile (rightly) ignores."""

    def __init__(
        self, statefile: StateFile, executor: ModelExecutor | None, credential: OtaCredential
    ) -> None:
        super().__init__(statefile, executor)
        self._credential = credential

    def apply(self, desired: DesiredState) -> None:
        self._credential.offer(desired.ota_token, desired.ota_token_expires_at_ms)
        super().apply(desired)


def _ca_pem(config: AgentConfig) -> bytes:
    if not config.server.ca_file:
        raise ConfigError("server.ca_file is required to authenticate the fleet server before enrolling")
    try:
        return Path(config.server.ca_file).read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read server.ca_file {config.server.ca_file}: {err}") from err


async def enroll_device(config: AgentConfig, bootstrap_token: str) -> str:
    """Generate the key on the device, send a CSR with the token, store the certificate."""
    from agent.transport.grpc_fleet import enroll

    if not config.device.id:
        raise ConfigError("device.id is required (or EDGELOOP_AGENT_DEVICE_ID)")
    store = IdentityStore(config.data_path)
    if store.is_enrolled():
        device_id = store.load().device_id
        logger.info("already enrolled device_id=%s", device_id)
        return device_id
    key = store.load_or_create_key()
    result = await enroll(
        endpoint=config.server.enroll_endpoint,
        ca_pem=_ca_pem(config),
        server_name=config.server.server_name,
        bootstrap_token=bootstrap_token,
        csr_pem=store.make_csr(key, config.device.id),
        device_id=config.device.id,
        profile=config.device.profile,
        agent_version=__version__,
    )
    store.save(
        device_id=result.device_id,
        cert_chain_pem=result.cert_chain_pem,
        ca_pem=result.ca_pem,
        sync_endpoint=result.sync_endpoint,
    )
    Reconciler(StateFile(config.data_path / "state.json")).apply(result.desired)
    logger.info("enrolled device_id=%s sync_endpoint=%s", result.device_id, result.sync_endpoint)
    return result.device_id


def _build_inference(config: AgentConfig) -> InferenceService | None:
    """The local inference API (lazy import: onnxruntime/LiteRT load only when a model does)."""
    if not config.inference.enabled:
        return None
    from agent.profile import load_profile
    from agent.serving.server import InferenceService

    profile = load_profile(config.device.profile)
    inf = config.inference
    return InferenceService(
        config.slots_root,
        profile,
        config.inference_socket,
        None if inf.tcp_port < 0 else inf.tcp_port,
        options=serving_options(config, profile),
        fast_socket_path=Path(inf.fast_socket_path) if inf.fast_socket_path else None,
        # in-process apps (agent.local.LocalModel) send captured predictions here
        sample_socket_path=config.inference_socket.with_suffix(".samples"),
    )


def serving_options(config: AgentConfig, profile: DeviceProfile) -> ServingOptions:
    """The local API's options: the agent's ``[inference]`` config decides whether it micro-batches;
    the device class's profile (``[serving] micro_batch``, the size the compiler judged quality at)
    caps how many samples one formed batch holds."""
    from agent.inference.engine import ServingOptions

    inf = config.inference
    return ServingOptions(
        workers=max(1, profile.runtime.threads),
        micro_batch=inf.micro_batch,
        micro_batch_max=profile.micro_batch or ServingOptions.micro_batch_max,
        micro_batch_wait_s=inf.micro_batch_wait_s,
        cache_entries=inf.cache_entries,
        capture_per_second=inf.capture_per_second,
        max_request_bytes=inf.max_request_bytes,
    )


def _build_ota(
    config: AgentConfig,
    device_id: str,
    inference: InferenceService | None,
    outbox: TelemetryOutbox,
    notify: Callable[[], None],
    *,
    credential: OtaCredential,
) -> OtaClient | None:
    """Signed model updates (TUF) into the inference service's slots; None when not configured."""
    from agent.inference.registry import ProfileLoader
    from agent.ota.factory import OtaConfig, build_ota_client
    from agent.profile import load_profile

    ota_config = OtaConfig.from_env()
    if ota_config is None:
        return None
    if inference is None:
        raise ConfigError("OTA needs the inference service (inference.enabled = true)")
    profile = load_profile(config.device.profile)
    return build_ota_client(
        config=ota_config,
        device_id=device_id,
        data_path=config.data_path,
        service=inference,
        slots_root=config.slots_root,
        loader=ProfileLoader(profile),
        reports=outbox,
        clock=SystemClock(),
        notify=notify,
        profile=profile.name,
        credential=credential,
    )


def _build_federated(
    config: AgentConfig, store: IdentityStore, identity: Identity, endpoint: str, ota: OtaClient | None
) -> FederatedClient | None:
    """Local training in federated rounds over the device's mTLS channel (numpy or torch trainer; never flwr).

    Trains only when the system readings allow it (`SystemConditions`); "mid-update" is the OTA
    client's persisted record being in flight.
    """
    from agent.federated.client import FederatedClient, FederatedConfig
    from agent.federated.conditions import SystemConditions
    from agent.ota.machine import in_flight

    fl_config = FederatedConfig.from_mapping(config.federated)
    if not fl_config.enabled:
        return None
    if not fl_config.server_name and config.server.server_name:
        fl_config = dataclasses.replace(fl_config, server_name=config.server.server_name)
    conditions = SystemConditions(
        max_load_per_cpu=fl_config.max_load_per_cpu,
        metered=fl_config.metered,
        updating=lambda: ota is not None and in_flight(ota.record),
    )
    cfg = fl_config

    def link() -> FederatedLink:
        # A new link per attempt, with the identity on disk now (a renewed certificate is used).
        if config.server.transport == "mqtt":
            from agent.federated.mqtt_link import MqttFederatedLink

            return MqttFederatedLink(
                endpoint=config.server.mqtt_endpoint,
                device_id=identity.device_id,
                store=store,
                server_name=cfg.server_name,
                max_task_bytes=cfg.max_task_bytes,
            )
        from agent.federated.transport import GrpcFederatedLink

        return GrpcFederatedLink(
            identity=store.load(),
            endpoint=endpoint,
            server_name=cfg.server_name,
            max_task_bytes=cfg.max_task_bytes,
        )

    return FederatedClient(
        identity=identity,
        endpoint=endpoint,
        data_dir=config.data_path,
        config=fl_config,
        conditions=conditions,
        link_factory=link,
    )


def _build_connector(
    config: AgentConfig, store: IdentityStore, identity: Identity, endpoint: str
) -> FleetConnector:
    """The Sync transport chosen by `[server] transport`: gRPC (default) or MQTT.

    Both reload the identity at each connect, so a renewed certificate is used by the next session.
    Enrollment stays on gRPC (`agent.enroll`) whatever the transport.
    """
    if config.server.transport == "mqtt":
        from agent.transport.mqtt_fleet import MqttFleetConnector

        return MqttFleetConnector(
            endpoint=config.server.mqtt_endpoint,
            device_id=identity.device_id,
            store=store,
            server_name=config.server.server_name,
        )
    from agent.transport.grpc_fleet import GrpcFleetConnector

    if not endpoint:
        raise ConfigError("no sync endpoint: set server.sync_endpoint or re-enroll")
    return GrpcFleetConnector(
        identity=identity, endpoint=endpoint, server_name=config.server.server_name, reload=store.load
    )


def _stop_on_signals(stop: asyncio.Event) -> SystemdNotifier:
    """SIGTERM/SIGINT set `stop` and tell systemd the stop has begun (STOPPING=1); returns the
    notifier (a no-op unless the agent runs as a Type=notify unit)."""
    systemd = SystemdNotifier.from_env()

    def request_stop() -> None:
        systemd.stopping()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    return systemd


async def run_daemon(config: AgentConfig) -> None:
    from agent.renewal import Renewer, recover

    # First: a SIGTERM while the adapters are built must still end in a clean stop (exit 0).
    stop = asyncio.Event()
    systemd = _stop_on_signals(stop)
    store = IdentityStore(config.data_path)
    recover(store)  # finish a certificate swap a crash interrupted, before the identity is read
    identity = store.load()
    endpoint = config.server.sync_endpoint or identity.sync_endpoint
    connector = _build_connector(config, store, identity, endpoint)
    outbox = TelemetryOutbox(config.data_path / "outbox.db", max_records=config.telemetry.queue_max_records)
    inference = _build_inference(config)
    wake: list[SyncLoop] = []

    def notify() -> None:  # new OTA reports: wake the Sync loop to send them now
        for loop_ in wake:
            loop_.telemetry_ready.set()

    from agent.ota.fetcher import OtaCredential

    credential = OtaCredential()
    ota = _build_ota(config, identity.device_id, inference, outbox, notify, credential=credential)
    federated = _build_federated(config, store, identity, endpoint, ota)
    if inference is not None and federated is not None:
        inference.set_feedback_sink(federated.store)  # Feedback -> the training samples
    reconciler = _CredentialReconciler(StateFile(config.data_path / "state.json"), ota, credential=credential)
    sync = SyncLoop(
        config=config,
        device_id=identity.device_id,
        outbox=outbox,
        connector=connector,
        reconciler=reconciler,
        clock=SystemClock(),
        resources=lambda: read_resources(config.data_path),
        status_path=config.data_path / "status.json",
        renewer=Renewer(store, fraction=config.server.renew_before_fraction),
    )
    wake.append(sync)
    logger.info(
        "agent started device_id=%s version=%s transport=%s endpoint=%s profile=%s",
        identity.device_id,
        __version__,
        config.server.transport,
        config.server.mqtt_endpoint if config.server.transport == "mqtt" else endpoint,
        config.device.profile,
    )
    tasks = [asyncio.create_task(_produce(config, outbox, sync, stop))]
    if inference is not None:
        serving = await inference.start()
        logger.info(
            "inference API listening socket=%s model=%s",
            config.inference_socket,
            f"{serving.name}@{serving.version}" if serving else "none",
        )
        tasks.append(asyncio.create_task(_report_inference(config, inference, outbox, sync, stop)))
        from agent.inference.metrics_report import ModelMetricsReporter

        drift_scores = _DriftScores()
        reporter = ModelMetricsReporter(
            inference.model_metrics,
            outbox,
            clock=SystemClock(),
            provenance=_metrics_provenance(drift_scores, ota),
        )
        tasks.append(asyncio.create_task(_report_model_metrics(config, reporter, sync, stop)))
        if config.drift.enabled and config.inference.capture_per_second > 0:
            tasks.append(
                asyncio.create_task(
                    _monitor_drift(config, inference, outbox, sync, stop, scores=drift_scores)
                )
            )
    if ota is not None:
        tasks.append(asyncio.create_task(ota.run(stop)))
    if federated is not None:
        tasks.append(asyncio.create_task(federated.run(stop)))
    # READY=1 now; WATCHDOG=1 from this event loop (a hung loop stops pinging and systemd restarts us).
    async with supervised(systemd, status=f"serving device_id={identity.device_id}"):
        try:
            await sync.run(stop)
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            if inference is not None:
                await inference.stop()
            sync.write_status()
            outbox.close()
            logger.info("agent stopped device_id=%s", identity.device_id)
