"""The agent's telemetry producers: the loops that put records into the outbox while the daemon runs.

Owns the periodic system readings (`kind="system"`), the inference stats per interval
(`kind="inference"`), the model metric windows (one `model_metrics` record per serving model every
`[metrics] window_s`, with their provenance: deployment, shadow agreement, drift score) and the drift
monitor feeding captured samples; each loop ends when the daemon's `stop` is set and wakes the Sync
loop (`telemetry_ready`) after recording something. A failing producer logs and carries on: it
never takes the daemon down.

Does not build the adapters it is handed (agent/daemon.py, the composition root, does), send
anything (agent/sync.py) or store records itself (agent/outbox.py). Imports only the stdlib and
light agent modules at load; the drift and metrics code loads lazily, as in the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from agent.errors import StorageError
from agent.ports import SystemClock
from agent.sysinfo import read_resources

if TYPE_CHECKING:
    from collections.abc import Callable

    from agent.config import AgentConfig
    from agent.inference.handle import ModelMeta
    from agent.inference.metrics_report import ModelMetricsReporter
    from agent.inference.model_metrics import ModelId
    from agent.inference.model_metrics_codec import Provenance
    from agent.ota.client import OtaClient
    from agent.outbox import TelemetryOutbox
    from agent.serving.server import InferenceService
    from agent.sync import SyncLoop

logger = logging.getLogger(__name__)


async def _produce(config: AgentConfig, outbox: TelemetryOutbox, loop: SyncLoop, stop: asyncio.Event) -> None:
    clock = SystemClock()
    while not stop.is_set():
        r = read_resources(config.data_path)
        metrics = {
            "cpu_load_1m": r.cpu_load_1m,
            "mem_available_bytes": float(r.mem_available_bytes),
            "disk_free_bytes": float(r.disk_free_bytes),
        }
        if math.isfinite(r.temperature_c):
            metrics["temperature_c"] = r.temperature_c
        try:
            outbox.append(timestamp_ms=clock.time_ms(), kind="system", metrics=metrics)
            loop.telemetry_ready.set()
        except StorageError as err:
            logger.error("telemetry not recorded: %s", err)
        try:
            await asyncio.wait_for(stop.wait(), timeout=config.telemetry.interval_s)
        except TimeoutError:
            pass


async def _report_inference(
    config: AgentConfig,
    service: InferenceService,
    outbox: TelemetryOutbox,
    loop: SyncLoop,
    stop: asyncio.Event,
) -> None:
    """Every stats interval: the latency histogram, errors and throughput per model version."""
    clock = SystemClock()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=config.inference.stats_interval_s)
        except TimeoutError:
            pass
        snapshot = service.stats_snapshot(reset=True)
        if not any(k.endswith(".requests") and v > 0 for k, v in snapshot.items()):
            continue
        try:
            outbox.append(timestamp_ms=clock.time_ms(), kind="inference", metrics=snapshot)
            loop.telemetry_ready.set()
        except StorageError as err:
            logger.error("inference telemetry not recorded: %s", err)


class _DriftScores:
    """The drift monitor's latest score per serving model (name, version), for the metric windows:
    the largest severity (statistic / threshold) of its open episodes, 0 while none is open; a
    model without a monitor (no reference shipped, drift or capture off) has none (-1)."""

    def __init__(self) -> None:
        self._scores: dict[tuple[str, str], float] = {}

    def note(self, serving: ModelMeta | None, monitor: Any) -> None:
        if serving is None:
            return
        key = (serving.name, serving.version)
        if monitor is None:
            self._scores.pop(key, None)
            return
        self._scores[key] = max((float(e.severity) for e in monitor.open_episodes()), default=0.0)

    def score(self, name: str, version: str) -> float:
        return self._scores.get((name, version), -1.0)


def _metrics_provenance(drift: _DriftScores, ota: OtaClient | None) -> Callable[[ModelId], Provenance]:
    from agent.inference.model_metrics_codec import Provenance

    def lookup(model: ModelId) -> Provenance:
        installed = ota.installed_by(model.sha256) if ota is not None else None
        deployment_id, agreement, rows = installed or ("", -1.0, 0)
        return Provenance(
            deployment_id=deployment_id,
            drift_score=drift.score(model.name, model.version),
            shadow_agreement=agreement,
            shadow_samples=rows,
        )

    return lookup


async def _report_model_metrics(
    config: AgentConfig, reporter: ModelMetricsReporter, loop: SyncLoop, stop: asyncio.Event
) -> None:
    """Every metrics window (and once more at shutdown): one model_metrics record per serving model."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=config.metrics.window_s)
        except TimeoutError:
            pass
        try:
            if reporter.emit():
                loop.telemetry_ready.set()
        except StorageError as err:
            logger.error("model metrics not recorded: %s", err)
        except Exception:  # a metrics bug must never take the daemon down
            logger.exception("model metrics window failed; its counts are lost")


async def _monitor_drift(
    config: AgentConfig,
    service: InferenceService,
    outbox: TelemetryOutbox,
    loop: SyncLoop,
    stop: asyncio.Event,
    *,
    scores: _DriftScores | None = None,
) -> None:
    """Feed captured inputs/outputs of the serving model to its calibrated drift monitor."""
    from agent.drift.feeder import DriftFeeder
    from agent.drift.monitor import DriftInputError
    from agent.drift.reporter import DriftReporter

    clock = SystemClock()
    feeder = DriftFeeder(
        lambda name, version: DriftReporter(outbox, clock=clock, model_name=name, model_version=version)
    )
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), timeout=config.drift.interval_s)
        except TimeoutError:
            pass
        try:
            serving = service.serving()
            if feeder.feed(serving, service.drain_samples("drift")):
                loop.telemetry_ready.set()
            if scores is not None:
                scores.note(serving, feeder.monitor)
        except StorageError as err:
            logger.error("drift report not recorded: %s", err)
        except DriftInputError as err:  # reported as a data-quality episode by the feeder
            loop.telemetry_ready.set()
            logger.error("drift monitor misfed (inputs not monitored): %s", err)
        except Exception:  # the monitor must never take the daemon down
            logger.exception("drift monitor failed; samples of this interval skipped")
