"""Registry service with a fake compiler (the real one runs in tests/integration/test_registry_handoff.py):
versions left registered or compiling by a killed server are compiled after a restart, and a
compiler that fails marks the version failed without stopping the worker; every status change
lands in the audit log, and an audit failure never undoes a change."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlmodel import Session

from fleet_server.audit.chain import Actor
from fleet_server.audit.port import MemoryAuditLog
from fleet_server.db import make_engine
from fleet_server.errors import InvalidRequestError
from fleet_server.federated.handoff import write_head_onnx
from fleet_server.migrate import upgrade
from fleet_server.models import Device
from fleet_server.ota.releases import OtaService
from fleet_server.registry.compile import CompileFailed, CompileJob
from fleet_server.registry.models import ModelVersion
from fleet_server.registry.schemas import VersionCreate
from fleet_server.registry.service import ModelRegistry


class FakeCompiler:
    """Writes what `edgeloop-compile build` writes: <out>/<profile>/model.onnx and report.json."""

    def __init__(self, fail: bool = False) -> None:
        self.jobs: list[CompileJob] = []
        self.fail = fail

    def build(self, job: CompileJob) -> dict[str, Any]:
        self.jobs.append(job)
        if self.fail:
            raise CompileFailed("compiler exit 51: UnsupportedError: no")
        report: dict[str, Any] = {"reference": {"accuracy": 0.9}, "profiles": {}}
        for profile in job.profiles:
            (job.out / profile).mkdir(parents=True)
            (job.out / profile / "model.onnx").write_bytes(job.model.read_bytes())
            report["profiles"][profile] = {
                "chosen": "onnx-fp32",
                "artifact": {"path": f"{profile}/model.onnx", "size_bytes": 1, "runtime": "onnxruntime"},
                "candidates": [{"recipe": "onnx-fp32", "metrics": {"accuracy": 0.9, "agreement": 1.0}}],
            }
        (job.out / "report.json").write_text(json.dumps(report))
        return report


def _setup(tmp_path: Path) -> tuple[Any, OtaService, VersionCreate]:
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(engine)
    ota = OtaService(tmp_path / "ota")
    model = write_head_onnx(tmp_path / "m.onnx", np.zeros((4, 3), np.float32), np.zeros(3, np.float32), {})

    def blob(data: bytes) -> str:
        upload = ota.new_upload()
        upload.write_bytes(data)
        return ota.adopt_blob(upload)[0]

    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64))
    data = blob((tmp_path / "d.npz").read_bytes())
    spec = VersionCreate(
        name="m",
        artifact_sha256=blob(model.read_bytes()),
        profiles=["generic-x86"],
        calib_sha256=data,
        eval_sha256=data,
    )
    return engine, ota, spec


def _wait(registry: ModelRegistry) -> None:
    deadline = time.monotonic() + 10
    while not registry.idle() and time.monotonic() < deadline:
        time.sleep(0.02)


def test_versions_left_by_a_killed_server_are_compiled_after_restart(tmp_path: Path) -> None:
    engine, ota, spec = _setup(tmp_path)
    first = ModelRegistry(engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=FakeCompiler())
    with Session(engine) as s:  # registered, but the process dies before its worker runs
        assert first.register(s, spec, created_by="t").status == "registered"
    compiler = FakeCompiler()
    second = ModelRegistry(engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=compiler)
    second.start()
    _wait(second)
    second.stop()
    assert [j.profiles for j in compiler.jobs] == [("generic-x86",)]
    with Session(engine) as s:
        version = second.get(s, "m", 1)
        assert version.status == "awaiting_approval"
        assert version.artifacts["generic-x86"]["accuracy"] == 0.9
        assert ota.blob(version.artifacts["generic-x86"]["artifact_sha256"]).exists()


def test_a_failing_compiler_marks_the_version_and_the_worker_goes_on(tmp_path: Path) -> None:
    engine, ota, spec = _setup(tmp_path)
    registry = ModelRegistry(
        engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=FakeCompiler(fail=True)
    )
    registry.start()
    with Session(engine) as s:
        registry.register(s, spec, created_by="t")
        registry.register(s, spec, created_by="t")
    _wait(registry)
    registry.stop()
    with Session(engine) as s:
        assert [(v.version, v.status) for v in registry.versions(s, "m")] == [(2, "failed"), (1, "failed")]
        assert "UnsupportedError" in registry.get(s, "m", 2).detail


def test_every_status_change_and_the_approval_land_in_the_audit_log(tmp_path: Path) -> None:
    engine, ota, spec = _setup(tmp_path)
    audit = MemoryAuditLog()
    ota.use_audit(audit)  # first: the keys OtaService generated at construction
    registry = ModelRegistry(
        engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=FakeCompiler(), audit=audit
    )
    alice = Actor.operator("tok1", "alice", "operator")
    with Session(engine) as s:
        s.add(Device(id="dev-1", profile="generic-x86"))
        s.commit()
        registry.register(s, spec, created_by="alice", actor=alice)
    registry.start()
    _wait(registry)
    with Session(engine) as s:
        with pytest.raises(InvalidRequestError):  # refused: nothing changed, nothing recorded
            registry.approve(s, "m", 1, devices=[], created_by="alice", actor=alice)
        before = len(audit.entries)
        registry.approve(s, "m", 1, devices=["dev-1"], created_by="alice", actor=alice)
    registry.stop()
    trail = [(e.action, e.target.kind, e.target.id, e.actor.name) for e in audit.entries]
    assert trail[0][:2] == ("ota.keys.generated", "ota_keys")
    assert trail[1:] == [
        ("model_version.registered", "model_version", "m@1", "alice"),
        ("model_version.compiling", "model_version", "m@1", "registry"),
        ("model_version.compiled", "model_version", "m@1", "registry"),
        ("model_version.awaiting_approval", "model_version", "m@1", "registry"),
        ("release.published", "release", "1", "alice"),
        ("release.deployed", "release", "1", "alice"),
        ("model_version.released", "model_version", "m@1", "alice"),
        ("model_version.approved", "model_version", "m@1", "alice"),
    ]
    assert before == 5
    released = audit.entries[-2]
    assert released.details["previous"] == "awaiting_approval" and released.actor == alice
    assert audit.entries[6].details["device_ids"] == ["dev-1"]
    assert audit.verify().ok


def test_a_failed_compile_is_recorded_with_its_reason(tmp_path: Path) -> None:
    engine, ota, spec = _setup(tmp_path)
    audit = MemoryAuditLog()
    registry = ModelRegistry(
        engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=FakeCompiler(fail=True), audit=audit
    )
    registry.start()
    with Session(engine) as s:
        registry.register(s, spec, created_by="t")
    _wait(registry)
    registry.stop()
    assert audit.actions() == ["model_version.registered", "model_version.compiling", "model_version.failed"]
    assert "UnsupportedError" in audit.entries[-1].details["detail"]
    assert audit.entries[-1].actor == Actor.system("registry")


class BrokenAudit:
    """An AuditRecorder whose storage is down."""

    def record(self, *args: object, **kwargs: object) -> object:
        raise OSError("audit database unavailable")


def test_an_audit_failure_never_undoes_or_blocks_the_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine, ota, spec = _setup(tmp_path)
    registry = ModelRegistry(
        engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=FakeCompiler(), audit=BrokenAudit()
    )
    with Session(engine) as s:
        version = registry.register(s, spec, created_by="t")
    assert version.status == "registered"  # committed although its audit entry was not written
    assert "AUDIT ENTRY NOT WRITTEN" in caplog.text and "model_version.registered" in caplog.text


def test_a_descendant_is_compiled_preferring_its_parents_recipe(tmp_path: Path) -> None:
    """Each profile's recipe of the parent is handed to the compiler (`--prefer-recipe`), so a new
    version keeps its parent's numerics unless that recipe no longer passes or is slower."""
    engine, ota, spec = _setup(tmp_path)
    compiler = FakeCompiler()
    registry = ModelRegistry(engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=compiler)
    registry.start()
    with Session(engine) as s:
        registry.register(s, spec, created_by="t")
    _wait(registry)
    with Session(engine) as s:
        parent = registry.get(s, "m", 1)
        child = ModelVersion(name="m", version=2, parent_version=1, source="federated",
                             artifact_sha256=parent.artifact_sha256, compile_spec=parent.compile_spec,
                             datasets=parent.datasets)  # fmt: skip
        s.add(child)
        s.commit()
        registry._enqueue(child.id)  # type: ignore[arg-type]  # what register() does after commit
    _wait(registry)
    registry.stop()
    assert [j.prefer_recipes for j in compiler.jobs] == [{}, {"generic-x86": "onnx-fp32"}]


def test_compile_settings_reach_the_job_and_the_compiler_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """batched_inputs and micro_batch ride in compile_spec, are not budgets, and become the
    compiler's --batched-inputs/--micro-batch ('' = no input batched)."""
    engine, ota, spec = _setup(tmp_path)
    compiler = FakeCompiler()
    registry = ModelRegistry(engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=compiler)
    registry.start()
    with Session(engine) as s:
        settings = {"batched_inputs": ["features"], "micro_batch": 8, "budgets": {"min_agreement": 0.9}}
        settings["drift_budget_per_10k"] = 1.5
        registry.register(s, VersionCreate(**(spec.model_dump() | settings)), created_by="t")
    _wait(registry)
    registry.stop()
    (job,) = compiler.jobs
    assert (job.batched_inputs, job.micro_batch, job.budgets) == (("features",), 8, {"min_agreement": 0.9})
    assert job.drift_budget_per_10k == 1.5

    from fleet_server.registry import compile as compile_mod

    seen: list[list[str]] = []

    def fake_run(argv: list[str], **_: Any) -> Any:
        seen.append(argv)
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr(subprocess, "run", fake_run)  # compile.py calls subprocess.run
    runner = compile_mod.SubprocessCompiler(("edgeloop-compile",))
    flags = {"--batched-inputs", "--micro-batch", "--drift-budget"}
    every = ["--batched-inputs", "features", "--micro-batch", "8", "--drift-budget", "1.5"]
    for batched, micro, budget, expected in [
        (("features",), 8, 1.5, every),
        ((), 1, None, ["--batched-inputs", "", "--micro-batch", "1"]),
        (None, None, None, []),
    ]:
        with pytest.raises(CompileFailed):
            runner.build(CompileJob(job.model, ("p",), job.calib, job.evaluation, job.out,
                                    batched_inputs=batched, micro_batch=micro,
                                    drift_budget_per_10k=budget))  # fmt: skip
        argv = seen[-1]
        tail = [a for i, a in enumerate(argv) if a in flags or argv[i - 1] in flags]
        assert tail == expected


def test_an_unknown_batched_input_is_refused_at_registration(tmp_path: Path) -> None:
    engine, ota, spec = _setup(tmp_path)
    registry = ModelRegistry(engine=engine, ota=ota, work_dir=tmp_path / "work", compiler=FakeCompiler())
    with (
        Session(engine) as s,
        pytest.raises(InvalidRequestError, match=r"batched_inputs: \['x'\] are not inputs"),
    ):
        registry.register(s, VersionCreate(**(spec.model_dump() | {"batched_inputs": ["x"]})), created_by="t")
