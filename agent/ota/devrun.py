"""`python -m agent.ota.devrun`: the agent daemon plus model serving and OTA, for tests and benches.

The same composition as `agent.daemon.run_daemon` (Sync loop, outbox) with the inference service
and the OTA client added, until the daemon wires them itself. Configuration: the agent's usual
``EDGELOOP_AGENT_*`` variables plus ``EDGELOOP_AGENT_OTA_*`` (see `factory.OtaConfig`).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from agent.config import load
from agent.identity import IdentityStore
from agent.inference.registry import ProfileLoader
from agent.ota.factory import OtaConfig, build_ota_client
from agent.outbox import TelemetryOutbox
from agent.ports import SystemClock
from agent.profile import load_profile
from agent.serving.server import InferenceService
from agent.statefile import StateFile
from agent.sync import Reconciler, SyncLoop
from agent.sysinfo import read_resources
from agent.transport.grpc_fleet import GrpcFleetConnector


async def main() -> None:
    config = load()
    ota_config = OtaConfig.from_env()
    assert ota_config is not None, "EDGELOOP_AGENT_OTA_BASE_URL is required"
    identity = IdentityStore(config.data_path).load()
    profile = load_profile(config.device.profile)
    slots_root = config.data_path / "slots"
    loader = ProfileLoader(profile)
    service = InferenceService(slots_root, profile, config.data_path / "inference.sock", loader=loader)
    await service.start()
    outbox = TelemetryOutbox(config.data_path / "outbox.db", max_records=config.telemetry.queue_max_records)
    holder: list[SyncLoop] = []
    client = build_ota_client(
        config=ota_config, device_id=identity.device_id, data_path=config.data_path, service=service,
        slots_root=slots_root, loader=loader, reports=outbox, clock=SystemClock(), profile=profile.name,
        notify=lambda: holder[0].telemetry_ready.set() if holder else None,
    )  # fmt: skip
    sync = SyncLoop(
        config=config, device_id=identity.device_id, outbox=outbox,
        connector=GrpcFleetConnector(
            identity=identity, endpoint=config.server.sync_endpoint or identity.sync_endpoint,
            server_name=config.server.server_name,
        ),
        reconciler=Reconciler(StateFile(config.data_path / "state.json"), client), clock=SystemClock(),
        resources=lambda: read_resources(config.data_path), status_path=config.data_path / "status.json",
    )  # fmt: skip
    holder.append(sync)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    ota = asyncio.create_task(client.run(stop))
    try:
        await sync.run(stop)
    finally:
        stop.set()
        await ota
        await service.stop()
        outbox.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(main())
