"""An app (its own process) runs the agent's model in-process with `LocalModel` while a real agent
(OTA client against a real TUF repository over loopback HTTP, real InferenceService and slots)
installs and commits v2, then switches to a release "3" whose watch window fails and rolls back.

The app calls the model from 4 threads without pause the whole time and checks every answer
against the reference outputs of the version the answer names. Must hold: zero failed calls, every
answer equal to its named version's outputs, each thread sees 1 -> 2 -> 3 -> 2 in order, and the
app serves each new version within one second of the agent's switch.

Run as a module it is the app: ``python -m tests.e2e.test_inprocess_ota SLOTS REF.npz``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

APP_THREADS = 4


def app_main(slots: Path, ref_path: Path) -> None:
    """The app: LocalModel, 4 calling threads until stdin closes; prints one JSON summary."""
    from agent.local import LocalModel

    refs = dict(np.load(ref_path))
    x = refs.pop("x")
    model = LocalModel(slots, poll_interval_s=0.1)
    stop = threading.Event()
    lock = threading.Lock()
    summary: dict[str, Any] = {"calls": 0, "failures": [], "mismatches": 0, "transitions": []}

    def worker(k: int) -> None:
        seen: list[tuple[float, str]] = []
        calls = mismatches = 0
        failures: list[str] = []
        i = k
        while not stop.is_set():
            i = (i + 7) % len(x)
            try:
                answer = model.predict_full(x[i : i + 1])
            except Exception as err:
                failures.append(repr(err))
                continue
            calls += 1
            ref = refs[f"v{answer.model_version}"][i]
            if not np.allclose(answer.outputs["logits"][0], ref, atol=1e-4):
                mismatches += 1
            if not seen or seen[-1][1] != answer.model_version:
                seen.append((time.time(), answer.model_version))
        with lock:
            summary["calls"] += calls
            summary["mismatches"] += mismatches
            summary["failures"] += failures[:20]
            summary["transitions"].append(seen)

    model.predict(x[:1])
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(APP_THREADS)]
    for t in threads:
        t.start()
    print("READY", flush=True)
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join()
    summary["stats"] = model.stats()
    model.close()
    print(json.dumps(summary), flush=True)


class _Recorded:
    """The real serving port; records when each switch and rollback completed, and makes the
    watch window of version "3" see failing requests (a model that degrades in production)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.events: list[tuple[str, float]] = []
        self._calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def promote(self) -> None:
        await self._inner.promote()
        self.events.append(("promote", time.time()))

    async def rollback(self) -> None:
        await self._inner.rollback()
        self.events.append(("rollback", time.time()))

    def error_counts(self) -> tuple[int, int]:
        model = self._inner.serving()
        if model is None or model.version != "3":
            return tuple(self._inner.error_counts())  # type: ignore[return-value]
        self._calls += 1
        return (0, 0) if self._calls % 2 else (100, 50)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_app_follows_commit_and_rollback_with_zero_failed_calls(tmp_path: Path) -> None:
    from agent.inference.onnx_backend import OnnxRuntime
    from tests.integration.test_ota_support import check, fleet_side, models, start_device

    m = models()
    x = m.x_live.astype(np.float32)
    refs = {"x": x}
    for version, path in (("1", m.v1), ("2", m.v2), ("3", m.v1)):  # release 3 re-ships v1's bytes
        runtime = OnnxRuntime(path)
        refs[f"v{version}"] = runtime.run({"input": x})["logits"]
        runtime.close()
    assert not np.allclose(refs["v1"], refs["v2"], atol=1e-4)  # the versions are distinguishable
    ref_path = tmp_path / "refs.npz"
    np.savez(ref_path, **refs)
    fleet_iter = fleet_side(tmp_path / "server")
    fleet = next(fleet_iter)
    golden = {"golden": m.golden, "golden_threshold": 0.8}

    async def scenario() -> tuple[dict[str, Any], list[tuple[str, float]]]:
        dev = await start_device(tmp_path, fleet, serving_wrapper=_Recorded)
        recorded: _Recorded = dev.work.serving  # type: ignore[assignment]
        app: subprocess.Popen[str] | None = None
        try:
            dep = fleet.deploy(fleet.publish(m.v1, "1", **golden), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep)[-1] == "committed", dev.reports.items
            app = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.e2e.test_inprocess_ota",
                    str(dev.root / "slots"),
                    str(ref_path),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert app.stdout is not None
            line = await asyncio.to_thread(app.stdout.readline)
            assert line.strip() == "READY", line
            await asyncio.sleep(0.5)
            dep = fleet.deploy(fleet.publish(m.v2, "2", **golden), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep)[-1] == "committed", dev.reports.items
            await asyncio.sleep(1.5)
            dep = fleet.deploy(fleet.publish(m.v1, "3", **golden), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep)[-3:] == ["watching", "reverting", "rolled_back"], dev.reports.items
            await asyncio.sleep(1.5)
            out, _ = await asyncio.to_thread(app.communicate, "", 60)
            return json.loads(out.strip().splitlines()[-1]), recorded.events
        finally:
            if app is not None and app.poll() is None:
                app.kill()
            await dev.service.stop()

    try:
        summary, events = asyncio.run(scenario())
    finally:
        next(fleet_iter, None)
    print(json.dumps({"calls": summary["calls"], "events": events, "transitions": summary["transitions"]}))
    assert summary["failures"] == [], summary["failures"]
    assert summary["mismatches"] == 0
    assert summary["calls"] > 1000, summary  # it kept calling through every switch
    assert summary["stats"]["refusals"] == 0
    assert [kind for kind, _ in events] == ["promote", "promote", "promote", "rollback"]  # 1, 2, 3, back
    (_, t_v2), (_, t_v3), (_, t_back) = events[1:]
    for seen in summary["transitions"]:
        versions = [v for _, v in seen]
        assert versions == ["1", "2", "3", "2"], seen  # each thread: every switch, in order, once
        (_, _), (at_v2, _), (at_v3, _), (at_back, _) = seen
        assert at_v2 - t_v2 <= 1.0 and at_v3 - t_v3 <= 1.0 and at_back - t_back <= 1.0, (seen, events)


if __name__ == "__main__":
    app_main(Path(sys.argv[1]), Path(sys.argv[2]))
