"""The registry compile worker across replicas: only the `registry-compile` lease holder compiles,
versions registered on another replica are picked up from the database, and when the holder stops
renewing (a frozen or killed process) the next holder requeues the version it left `compiling`
and compiles it, while the old holder's late result is fenced (written nowhere)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from sqlmodel import Session

from fleet_server.coordination.leases import LeaseStore
from fleet_server.db import make_engine
from fleet_server.federated.handoff import write_head_onnx
from fleet_server.migrate import upgrade
from fleet_server.ota.releases import OtaService
from fleet_server.registry.compile import CompileJob
from fleet_server.registry.schemas import VersionCreate
from fleet_server.registry.service import ModelRegistry
from tests.unit.fleet_server.test_registry_service import FakeCompiler


class GatedCompiler(FakeCompiler):
    """Blocks every build until `gate` is set (a compile in flight when the holder freezes)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def build(self, job: CompileJob) -> dict[str, Any]:
        self.entered.set()
        self.gate.wait(30)
        return super().build(job)


def _wait(what: str, cond: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_compile_worker_across_replicas_and_takeover_of_a_frozen_holder(
    tmp_path: Path, database_url: str
) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'r.db'}")
    upgrade(engine)
    ota = OtaService(tmp_path / "ota")
    model = write_head_onnx(tmp_path / "m.onnx", np.zeros((4, 3), np.float32), np.zeros(3, np.float32), {})
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 4), np.float32), y=np.zeros(2, np.int64))

    def blob(path: Path) -> str:
        upload = ota.new_upload()
        upload.write_bytes(path.read_bytes())
        return ota.adopt_blob(upload)[0]

    data = blob(tmp_path / "d.npz")
    spec = VersionCreate(
        name="m", artifact_sha256=blob(model), profiles=["generic-x86"], calib_sha256=data, eval_sha256=data
    )
    compilers = {"ra": GatedCompiler(), "rb": FakeCompiler()}
    replicas = {
        name: ModelRegistry(
            engine=engine,
            ota=ota,
            work_dir=tmp_path / f"work-{name}",
            compiler=compiler,
            leases=LeaseStore(engine),
            holder=name,
            lease_ttl_s=2.0,
            poll_s=0.2,
        )
        for name, compiler in compilers.items()
    }
    replicas["ra"].start()
    _wait("ra to hold the lease", lambda: replicas["ra"].compiles_here)
    replicas["rb"].start()
    try:
        time.sleep(0.5)
        assert not replicas["rb"].compiles_here  # one worker fleet-wide
        with Session(engine) as s:  # registered through the replica that does not compile
            replicas["rb"].register(s, spec, created_by="t")
        _wait("ra to start compiling v1", compilers["ra"].entered.is_set)
        # ra freezes mid-compile: no more renewals (as a SIGSTOPped or killed process)
        singleton = replicas["ra"]._singleton
        assert singleton is not None
        singleton._stop.set()
        _wait("rb to take over", lambda: replicas["rb"].compiles_here, timeout=15)
        _wait("rb to compile the version ra left compiling", lambda: compilers["rb"].jobs)

        def status() -> str:
            with Session(engine) as s:
                return replicas["rb"].get(s, "m", 1).status

        _wait("v1 compiled by rb", lambda: status() == "awaiting_approval")
        compilers["ra"].gate.set()  # the frozen holder wakes up and finishes its build
        _wait("ra's late build", lambda: compilers["ra"].jobs)
        time.sleep(0.5)
        assert status() == "awaiting_approval"
        with Session(engine) as s:
            assert replicas["rb"].get(s, "m", 1).artifacts["generic-x86"]["accuracy"] == 0.9
        assert len(compilers["rb"].jobs) == 1
    finally:
        compilers["ra"].gate.set()
        for registry in replicas.values():
            registry.stop()
        engine.dispose()
