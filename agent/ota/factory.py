"""Builds an `OtaClient` from configuration (called by the agent's composition root).

`OtaConfig.from_env` reads ``EDGELOOP_AGENT_OTA_*`` (base_url, trusted_root, poll_interval_s,
use_delta, download_attempts, update_attempts, update_backoff_s, update_backoff_max_s) until the
agent config file grows an ``[ota]`` section with the same keys.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import urllib3

from agent.errors import ConfigError
from agent.inference.runtime import RuntimeLoader
from agent.ota.client import OtaClient, ReportSink, UpdateRetry
from agent.ota.crash import CrashPoints
from agent.ota.fetcher import Downloader, HttpFetcher, OtaCredential, RetryPolicy
from agent.ota.serving import InferenceServing
from agent.ota.store import RecordStore
from agent.ota.trust import Trust
from agent.ota.work import Work, WorkLimits
from agent.ports import Clock
from agent.serving.server import InferenceService


@dataclass(frozen=True)
class OtaConfig:
    base_url: str  # e.g. http://fleet.example:8080/ota
    trusted_root: Path  # root.json provisioned with the device image
    poll_interval_s: float = 300.0
    use_delta: bool = True
    download_attempts: int = 5
    update_attempts: int = 5  # transient failures of one update step before it ends in `failed`
    update_backoff_s: float = 2.0
    update_backoff_max_s: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OtaConfig | None:
        """None when OTA is not configured (no base URL).

        Raises:
            ConfigError: a value cannot be parsed or the trusted root is missing.
        """
        env = os.environ if env is None else env
        base = env.get("EDGELOOP_AGENT_OTA_BASE_URL", "")
        if not base:
            return None
        root = Path(env.get("EDGELOOP_AGENT_OTA_TRUSTED_ROOT", ""))
        if not root.is_file():
            raise ConfigError(f"EDGELOOP_AGENT_OTA_TRUSTED_ROOT {root} is not a file")
        try:
            config = cls(
                base_url=base,
                trusted_root=root,
                poll_interval_s=float(env.get("EDGELOOP_AGENT_OTA_POLL_INTERVAL_S", 300.0)),
                use_delta=env.get("EDGELOOP_AGENT_OTA_USE_DELTA", "1") not in ("0", "false"),
                download_attempts=int(env.get("EDGELOOP_AGENT_OTA_DOWNLOAD_ATTEMPTS", 5)),
                update_attempts=int(env.get("EDGELOOP_AGENT_OTA_UPDATE_ATTEMPTS", 5)),
                update_backoff_s=float(env.get("EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_S", 2.0)),
                update_backoff_max_s=float(env.get("EDGELOOP_AGENT_OTA_UPDATE_BACKOFF_MAX_S", 60.0)),
            )
        except ValueError as err:
            raise ConfigError(f"invalid OTA setting: {err}") from err
        if not 1 <= config.update_attempts <= 100 or not 1 <= config.download_attempts <= 100:
            raise ConfigError("OTA attempts must be between 1 and 100")
        if not 0.0 <= config.update_backoff_s <= config.update_backoff_max_s <= 3600.0:
            raise ConfigError("OTA update backoff must satisfy 0 <= backoff_s <= backoff_max_s <= 3600")
        return config


def system_resources(path: Path) -> Callable[[], tuple[int, int]]:
    def read() -> tuple[int, int]:
        disk = shutil.disk_usage(path).free
        ram = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return disk, ram

    return read


def build_ota_client(
    *,
    config: OtaConfig,
    device_id: str,
    data_path: Path,
    service: InferenceService,
    slots_root: Path,
    loader: RuntimeLoader,
    reports: ReportSink,
    clock: Clock,
    notify: Callable[[], None] | None = None,
    profile: str = "",
    credential: OtaCredential | None = None,
) -> OtaClient:
    """The OTA client of one device; run it with ``asyncio.create_task(client.run(stop))`` and pass it
    to ``Reconciler(statefile, client)`` as the ModelExecutor."""
    directory = data_path / "ota"
    directory.mkdir(parents=True, exist_ok=True)
    pool = urllib3.PoolManager(num_pools=4, maxsize=4)
    policy = RetryPolicy(attempts=config.download_attempts)
    downloader = Downloader(pool, policy=policy, credential=credential)
    work = Work(
        directory=directory,
        downloader=downloader,
        serving=InferenceServing(service, slots_root=slots_root, loader=loader),
        resources=system_resources(directory),
        limits=WorkLimits(use_delta=config.use_delta, profile=profile),
    )
    trust = Trust(
        device_id=device_id,
        metadata_dir=directory / "metadata",
        base_url=config.base_url,
        fetcher=HttpFetcher(pool, credential=credential),
        bootstrap_root=config.trusted_root,
    )
    return OtaClient(
        trust=trust,
        work=work,
        store=RecordStore(directory / "update.json"),
        reports=reports,
        clock=clock,
        poll_interval_s=config.poll_interval_s,
        crash=CrashPoints.from_env(),
        notify=notify,
        retry=UpdateRetry(
            attempts=config.update_attempts,
            initial_s=config.update_backoff_s,
            max_s=config.update_backoff_max_s,
        ),
    )
