"""Issue 17: a release's warm-up sample on the device — the plan carries it (old plans load without it),
verify fetches and checks it against the signed target, stage warms the candidate up on it (zeros,
and the old call, when the release ships none), and a sample that is not an .npz fails the install."""

from __future__ import annotations

import asyncio
import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np

from agent.ota.states import UpdateEvent
from agent.ota.trust import Plan, TargetRef
from agent.ota.work import Work


def _ref(name: str, data: bytes) -> TargetRef:
    sha = hashlib.sha256(data).hexdigest()
    return TargetRef(f"models/m/r1/{name}", f"http://repo/targets/models/m/r1/{sha}.{name}", len(data), sha)


class _Downloader:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.bytes_received = 0

    def download(self, url: str, dest: Path, *, length: int, sha256: str) -> Path:
        data = self.files[url]
        dest.write_bytes(data)
        self.bytes_received += len(data)
        return dest


class _Serving:
    def __init__(self) -> None:
        self.loads: list[dict[str, Any]] = []

    def serving(self) -> None:
        return None

    async def load_candidate(self, artifact: Path, **kwargs: Any) -> None:
        self.loads.append(kwargs)

    def held_models(self) -> list[tuple[Path, str]]:
        return []


def _work(tmp_path: Path, files: dict[str, bytes], serving: _Serving) -> Work:
    return Work(
        directory=tmp_path / "ota",
        downloader=_Downloader(files),  # type: ignore[arg-type]
        serving=serving,  # type: ignore[arg-type]
        resources=lambda: (1 << 40, 1 << 40),
    )


def _plan(artifact: bytes, warmup: bytes | None) -> Plan:
    return Plan(
        "dep_1", 1, "vad", "3", _ref("model.onnx", artifact), None, None, 0.0,
        warmup=_ref("warmup.npz", warmup) if warmup is not None else None,
    )  # fmt: skip


def _sample_bytes() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, x=np.ones((1, 16), np.float32), sr=np.array(16000, np.int64))
    return buffer.getvalue()


def _files(plan: Plan, artifact: bytes, warmup: bytes | None) -> dict[str, bytes]:
    files = {plan.artifact.url: artifact}
    if plan.warmup is not None and warmup is not None:
        files[plan.warmup.url] = warmup
    return files


def test_plan_round_trips_the_warmup_and_loads_plans_saved_without_one() -> None:
    plan = _plan(b"model", _sample_bytes())
    assert Plan.from_dict(plan.to_dict()) == plan
    old = plan.to_dict()
    del old["warmup"]  # an update record persisted before this field existed
    assert Plan.from_dict(old).warmup is None


def test_candidate_is_warmed_up_on_the_release_sample(tmp_path: Path) -> None:
    artifact, sample = b"model bytes", _sample_bytes()
    plan = _plan(artifact, sample)
    serving = _Serving()
    work = _work(tmp_path, _files(plan, artifact, sample), serving)
    (work.artifact_path(plan)).write_bytes(artifact)
    assert work.verify(plan).event is UpdateEvent.VERIFIED
    staged = asyncio.run(work.stage(plan))
    assert staged.event is UpdateEvent.STAGED and "on the release's sample" in staged.detail
    warmup = serving.loads[0]["warmup"]
    assert warmup["x"].tolist() == np.ones((1, 16)).tolist() and int(warmup["sr"]) == 16000


def test_without_a_sample_the_old_call_and_zeros(tmp_path: Path) -> None:
    artifact = b"model bytes"
    plan = _plan(artifact, None)
    serving = _Serving()
    work = _work(tmp_path, _files(plan, artifact, None), serving)
    (work.artifact_path(plan)).write_bytes(artifact)
    staged = asyncio.run(work.stage(plan))
    assert staged.event is UpdateEvent.STAGED and "on zeros" in staged.detail
    assert "warmup" not in serving.loads[0]  # ports written before warm-up samples keep working


def test_a_sample_that_is_not_an_npz_fails_verification(tmp_path: Path) -> None:
    artifact, garbage = b"model bytes", b"signed, but not an npz"
    plan = _plan(artifact, garbage)
    work = _work(tmp_path, _files(plan, artifact, garbage), _Serving())
    (work.artifact_path(plan)).write_bytes(artifact)
    outcome = work.verify(plan)
    assert outcome.event is UpdateEvent.VERIFY_FAILED
    assert "warm-up sample refused: warm-up sample is not a readable .npz" in outcome.detail
