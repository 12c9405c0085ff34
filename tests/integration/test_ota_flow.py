"""OTA commit protocol end to end in process: real TUF repository over loopback HTTP, real ONNX
models, real InferenceService; deltas, quality gates and rollback."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.drift.feeder import REFERENCE_FILE, DriftFeeder
from agent.drift.reporter import DriftReporter
from agent.ota.serving import InferenceServing
from agent.outbox import TelemetryOutbox
from agent.ports import SystemClock
from tests.integration.test_ota_support import (
    FleetSide,
    check,
    drift_references,
    fleet_side,
    models,
    start_device,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetSide]:
    yield from fleet_side(tmp_path / "server")


def test_full_then_delta_update_commits(tmp_path: Path, fleet: FleetSide) -> None:
    m = models()

    async def scenario() -> None:
        dev = await start_device(tmp_path, fleet)
        try:
            dep1 = fleet.deploy(fleet.publish(m.v1, "1", golden=m.golden, golden_threshold=0.8), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep1) == [
                "downloading", "verifying", "staging", "golden_check", "shadowing",
                "switching", "watching", "committing", "committed",
            ]  # fmt: skip
            assert dev.service.serving() is not None and dev.service.serving().version == "1"  # type: ignore[union-attr]
            full = dev.work.downloader.bytes_received
            downloaded = next(r for r in dev.reports.items if r["event"] == "downloaded")
            assert "full xz download" in downloaded["detail"] and full < m.v1.stat().st_size
            dep2 = fleet.deploy(fleet.publish(m.v2, "2", golden=m.golden, golden_threshold=0.8), "dev-1")
            before = dev.work.downloader.bytes_received
            await check(dev)
            assert dev.reports.chain(dep2)[-1] == "committed", dev.reports.items
            assert dev.service.serving().version == "2"  # type: ignore[union-attr]
            delta = dev.work.last_delta["fetched"]
            assert dev.work.downloader.bytes_received - before < m.v2.stat().st_size * 0.2
            assert 0 < delta < m.v2.stat().st_size * 0.2, (delta, full)
            assert dev.work.last_delta["patched"] >= 1  # the fine-tuned head came as an XOR patch
        finally:
            await dev.service.stop()

    asyncio.run(scenario())


class DegradingServing:
    """The real serving adapter, but while version "2" serves, the watch window sees half of all
    requests fail (a working fake of a model that degrades on production traffic)."""

    def __init__(self, inner: InferenceServing) -> None:
        self._inner = inner
        self._calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def error_counts(self) -> tuple[int, int]:
        model = self._inner.serving()
        if model is None or model.version != "2":
            return self._inner.error_counts()
        self._calls += 1
        return (0, 0) if self._calls % 2 else (100, 50)


def test_quality_gates_never_switch_or_revert(tmp_path: Path, fleet: FleetSide) -> None:
    m = models()

    async def scenario() -> None:
        dev = await start_device(tmp_path, fleet, serving_wrapper=DegradingServing)
        try:
            golden = {"golden": m.golden, "golden_threshold": 0.8}
            dep = fleet.deploy(fleet.publish(m.v1, "1", **golden), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep)[-1] == "committed"
            v1_sha = dev.service.serving().sha256  # type: ignore[union-attr]

            dep = fleet.deploy(fleet.publish(m.scrambled, "bad-golden", **golden), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep)[-2:] == ["golden_check", "failed"], dev.reports.items
            assert "golden accuracy" in dev.reports.items[-1]["detail"]

            dep = fleet.deploy(
                fleet.publish(m.scrambled, "bad-shadow", golden=m.golden, golden_threshold=0.0), "dev-1"
            )
            dev.serving.live_inputs = lambda: [{"input": m.x_live[i : i + 1]} for i in range(32)]  # type: ignore[method-assign]
            await check(dev)
            assert dev.reports.chain(dep)[-2:] == ["shadowing", "failed"], dev.reports.items
            assert "agreement" in dev.reports.items[-1]["detail"]
            assert dev.service.serving().sha256 == v1_sha  # type: ignore[union-attr]

            dep = fleet.deploy(fleet.publish(m.v2, "2", **golden), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep)[-3:] == ["watching", "reverting", "rolled_back"], dev.reports.items
            assert dev.service.serving().sha256 == v1_sha  # type: ignore[union-attr]
            assert "committed" not in dev.reports.chain(dep)
        finally:
            await dev.service.stop()

    asyncio.run(scenario())


def test_drift_reference_travels_with_its_model_through_switch_and_rollback(
    tmp_path: Path, fleet: FleetSide
) -> None:
    """The release's drift_reference.json lands in the serving slot byte for byte; a rollback brings
    back the previous slot's own reference (or none); the drift feeder binds a new monitor per swap."""
    m = models()
    ref_a, ref_b = drift_references()
    fast: dict[str, Any] = {"gates": {"watch_s": 0.3, "shadow_window_s": 1.0}}  # no golden set: short window

    async def scenario() -> None:
        dev = await start_device(tmp_path, fleet, serving_wrapper=DegradingServing)
        slots = dev.root / "slots"
        outbox = TelemetryOutbox(tmp_path / "drift.db", max_records=100)
        feeder = DriftFeeder(
            lambda n, v: DriftReporter(outbox, clock=SystemClock(), model_name=n, model_version=v)
        )

        def bind() -> Any:
            feeder.feed(dev.service.serving(), [])  # what the daemon's drift loop does each drain
            return feeder.monitor

        async def install(artifact: Path, version: str, reference: Path | None) -> list[str]:
            dep = fleet.deploy(fleet.publish(artifact, version, drift_reference=reference, **fast), "dev-1")
            await check(dev)
            return dev.reports.chain(dep)

        try:
            assert (await install(m.v1, "1", ref_a))[-1] == "committed", dev.reports.items
            assert (slots / "current" / REFERENCE_FILE).read_bytes() == ref_a.read_bytes()
            staged = next(r for r in dev.reports.items if r["event"] == "staged")
            assert REFERENCE_FILE in staged["detail"]
            first = bind()
            assert first is not None and feeder.status == "monitoring digits@1"

            # version "2" degrades in the watch window (DegradingServing): switched, then rolled back
            chain = await install(m.v2, "2", ref_b)
            assert chain[-3:] == ["watching", "reverting", "rolled_back"], dev.reports.items
            assert (slots / "current" / REFERENCE_FILE).read_bytes() == ref_a.read_bytes()
            assert (slots / "broken" / REFERENCE_FILE).read_bytes() == ref_b.read_bytes()
            assert bind() is first  # the same model and the same reference file serve again

            assert (await install(m.v2, "3", ref_b))[-1] == "committed", dev.reports.items
            assert (slots / "current" / REFERENCE_FILE).read_bytes() == ref_b.read_bytes()
            assert (slots / "previous" / REFERENCE_FILE).read_bytes() == ref_a.read_bytes()
            third = bind()
            assert third is not None and third is not first and feeder.status == "monitoring digits@3"

            # the same model name, version and bytes re-released without a reference: no monitor
            assert (await install(m.v2, "3", None))[-1] == "committed", dev.reports.items
            assert not (slots / "current" / REFERENCE_FILE).exists()
            assert bind() is None and "ships no drift_reference.json" in feeder.status

            # a rollback to a slot that has no reference leaves the serving slot without one
            chain = await install(m.v2, "2", ref_b)
            assert chain[-1] == "rolled_back", dev.reports.items
            assert dev.service.serving().version == "3"  # type: ignore[union-attr]
            assert not (slots / "current" / REFERENCE_FILE).exists()
            assert bind() is None
        finally:
            await dev.service.stop()
            outbox.close()

    asyncio.run(scenario())
