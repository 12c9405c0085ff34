"""`LocalModel` on real slots and real exported models: following promote and rollback, refusing
tampered bytes, feeding the agent's capture ring through the lossy sample side channel, and
counting an app process's calls in the agent's live model metric windows.

Run as a module it is the app of the metrics test: ``python -m tests.integration.test_inprocess
SLOTS SAMPLE_SOCKET``."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.errors import IntegrityError, InvalidInputError, NoModelError, RequestTooLargeError
from agent.inference.engine import ServingOptions
from agent.inference.metrics_report import ModelMetricsReporter
from agent.local import LocalModel
from agent.profile import load_profile
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from agent.slots import CANDIDATE, CURRENT, LocalSlotFS, Slots
from fleet_server.rollouts.metrics import parse_window
from tests.fixtures.models import DigitsModels, digits_models


@pytest.fixture(scope="module")
def models() -> DigitsModels:
    return digits_models()


def _stage(slots: Slots, artifact: Path, version: str) -> None:
    slots.stage_candidate(artifact, name="digits", version=version)


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the weights: still a loadable model
    path.write_bytes(bytes(data))


def test_follows_promote_and_rollback_and_answers_with_the_version(
    tmp_path: Path, models: DigitsModels
) -> None:
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    x = models.data.x_test[:8]
    with LocalModel(tmp_path / "slots", poll_interval_s=0.05, max_request_bytes=32 * 1024) as app:
        with pytest.raises(NoModelError):
            app.predict(x)  # nothing installed yet: a clear "retry later"
        _stage(slots, models.onnx_fp32, "1")
        slots.promote()
        app.refresh()  # no need to wait for the poller (which may have been first)
        first = app.predict_full(x)
        assert first.model_version == "1"
        assert np.abs(first.outputs["logits"] - models.reference_logits[:8]).max() <= 1e-4
        _stage(slots, models.onnx_int8, "2")
        slots.promote()
        deadline = time.monotonic() + 5
        while app.predict_full(x).model_version != "2":  # the poller picks it up by itself
            assert time.monotonic() < deadline, "the app did not follow the promote"
        slots.rollback()
        deadline = time.monotonic() + 5
        while app.predict_full(x).model_version != "1":
            assert time.monotonic() < deadline, "the app did not follow the rollback"
        with pytest.raises(InvalidInputError, match="expected signature"):
            app.predict(np.zeros((1, 1, 9, 8), np.float32))
        with pytest.raises(RequestTooLargeError, match="51200 bytes of tensors, the limit is 32768"):
            app.predict(np.zeros((200, 1, 8, 8), np.float32))
        assert app.stats()["swaps"] == 3 and app.stats()["errors"] == 2


def test_tampered_model_is_refused_and_the_verified_one_keeps_serving(
    tmp_path: Path, models: DigitsModels
) -> None:
    root = tmp_path / "slots"
    slots = Slots(LocalSlotFS(root))
    _stage(slots, models.onnx_fp32, "1")
    slots.promote()
    x = models.data.x_test[:4]
    with LocalModel(root, poll_interval_s=3600) as app:
        _stage(slots, models.onnx_int8, "2")
        _tamper(root / CANDIDATE / models.onnx_int8.name)
        slots.promote()  # the slot record still holds the signed digest of the real v2
        with pytest.raises(IntegrityError, match="the slot record says"):
            app.refresh()
        assert app.predict_full(x).model_version == "1"  # not a failed call: the old model serves
        assert app.refresh() is None  # the same refused bytes are not hashed again
        assert [(r.version, "sha256" in r.reason) for r in app.refusals] == [("2", True)]
        _stage(slots, models.onnx_int8, "3")
        slots.promote()
        assert app.refresh() is not None
        assert app.predict_full(x).model_version == "3"
    _tamper(root / CURRENT / models.onnx_int8.name)
    with pytest.raises(IntegrityError, match="the slot record says"):
        LocalModel(root)  # an app starting on tampered bytes refuses to serve them at all


def test_samples_reach_the_agents_capture_ring_and_never_block_the_app(
    tmp_path: Path, models: DigitsModels
) -> None:
    profile = load_profile("generic-x86")
    samples = tmp_path / "samples.sock"
    options = ServingOptions(capture_per_second=1000.0, capture_capacity=64)
    service = InferenceService(
        tmp_path / "slots", profile, tmp_path / "api.sock", options=options, sample_socket_path=samples
    )
    x = models.data.x_test[:1]
    with BackgroundService(service) as bg:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1"))
        with LocalModel(tmp_path / "slots", sample_socket=samples, samples_per_second=1000.0) as app:
            for _ in range(50):
                app.predict(x)
                time.sleep(0.002)
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as raw:
                raw.sendto(b"ELT\x02 not a sample", str(samples))  # malformed: counted, dropped
            deadline = time.monotonic() + 5
            got: list[object] = []
            while len(got) < 10 and time.monotonic() < deadline:
                got += bg.call(lambda: _drain(service))
                time.sleep(0.05)
            assert app.stats()["samples_sent"] >= 10
    assert len(got) >= 10
    sample = got[0]
    assert sample.model == "digits@1"  # type: ignore[attr-defined]
    assert np.array_equal(sample.inputs["input"], x)  # type: ignore[attr-defined]
    assert sample.outputs["logits"].shape == (1, 10)  # type: ignore[attr-defined]
    assert service._intake is not None and service._intake.rejected == 1
    # the agent is gone now: the app keeps serving; samples are dropped and counted, not waited on
    slots_app = LocalModel(tmp_path / "slots", sample_socket=samples, samples_per_second=1000.0)
    try:
        for _ in range(20):
            slots_app.predict(x)
            time.sleep(0.002)
        assert slots_app.stats()["samples_dropped"] >= 1 and slots_app.stats()["samples_sent"] == 0
    finally:
        slots_app.close()  # its last metrics window has nowhere to go: a counted drop, not a wait
    assert slots_app.stats()["metrics_windows_dropped"] >= 1
    assert slots_app.stats()["metrics_windows_sent"] == 0


async def _drain(service: InferenceService) -> list[object]:
    return list(service.drain_samples("drift"))


class _Outbox:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def append(self, *, timestamp_ms: int, kind: str, metrics: dict[str, float], payload: bytes = b"") -> int:
        self.records.append({"kind": kind, "metrics": metrics, "payload": payload})
        return len(self.records)


class _Clock:
    def time_ms(self) -> int:
        return int(time.time() * 1000)


def test_an_app_process_calls_are_counted_in_the_agents_metric_windows(
    tmp_path: Path, models: DigitsModels
) -> None:
    """A real agent (InferenceService) and an app in its own process: 20 calls of 3 rows and 4
    failing calls on v1, then (after the agent installs v2) 10 calls of 2 rows and 2 failing ones.
    The agent's next metric windows, as the daemon's reporter emits them and the fleet server
    decodes them, count every one of the app's predictions and errors under the right version."""
    profile = load_profile("generic-x86")
    samples = tmp_path / "samples.sock"
    options = ServingOptions(capture_per_second=0.0)  # metric windows flow without sample capture
    service = InferenceService(
        tmp_path / "slots", profile, tmp_path / "api.sock", options=options, sample_socket_path=samples
    )
    np.save(tmp_path / "x.npy", models.data.x_test[:64])
    served: dict[str, str] = {}
    with BackgroundService(service) as bg:
        served["1"] = bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1")).sha256
        app = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.test_inprocess", str(tmp_path), str(samples)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert app.stdin is not None and app.stdout is not None
            assert app.stdout.readline().strip() == "v1 done"
            served["2"] = bg.call(
                lambda: service.install(models.onnx_int8, name="digits", version="2")
            ).sha256
            app.stdin.write("next\n")
            app.stdin.flush()
            stats = json.loads(app.stdout.readline())
            assert app.wait(30) == 0
        finally:
            if app.poll() is None:
                app.kill()
        assert stats["calls"] == 30 and stats["errors"] == 6 and stats["metrics_windows_dropped"] == 0
        intake = service._intake
        assert intake is not None
        deadline = time.monotonic() + 10
        while intake.windows_merged < stats["metrics_windows_sent"]:
            assert time.monotonic() < deadline, (intake.windows_merged, stats)
            time.sleep(0.02)
        assert intake.windows_unknown == intake.windows_rejected == 0
        outbox = _Outbox()
        assert ModelMetricsReporter(service.model_metrics, outbox, clock=_Clock()).emit() == 2
    by_version = {}
    for record in outbox.records:
        window = parse_window(record["payload"])
        by_version[window["model_version"]] = (window, record["metrics"])
    for version, predictions, errors in (("1", 60, 4), ("2", 20, 2)):
        window, metrics = by_version[version]
        assert (window["predictions"], window["errors"]) == (predictions, errors)
        assert window["model_sha256"] == served[version]
        assert sum(window["confidence_hist"]) == predictions  # the digits CNN's logits: a classifier
        assert window["latency_count"] == predictions // (3 if version == "1" else 2)
        assert (metrics["inprocess_predictions"], metrics["inprocess_errors"]) == (predictions, errors)


def app_main(root: Path, sample_socket: Path) -> None:
    """The app of the metrics test: calls on v1, waits for a line on stdin, calls on v2."""
    x = np.load(root / "x.npy")
    with LocalModel(root / "slots", sample_socket=sample_socket, samples_per_second=0) as app:
        for version, calls, rows, failing in (("1", 20, 3, 4), ("2", 10, 2, 2)):
            if version == "2":
                sys.stdin.readline()
                deadline = time.monotonic() + 10
                while app.refresh() is None and (app.serving is None or app.serving.version != "2"):
                    assert time.monotonic() < deadline, "the app did not follow the agent to v2"
                    time.sleep(0.01)
            for i in range(calls):
                assert app.predict_full(x[i : i + rows]).model_version == version
            for _ in range(failing):
                try:
                    app.predict(np.zeros((1, 1, 9, 8), np.float32))
                except InvalidInputError:
                    pass
            if version == "1":
                print("v1 done", flush=True)
    print(json.dumps(app.stats()), flush=True)


if __name__ == "__main__":
    app_main(Path(sys.argv[1]), Path(sys.argv[2]))
