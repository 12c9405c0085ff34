"""The repository's own rules: online timestamp/snapshot re-signed before they go stale, snapshot
binds every targets role by hash, a new root must verify against the old one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from fleet_server.ota.keys import KeyRing
from fleet_server.ota.repository import OtaRepository


def _repo(tmp_path: Path, now: datetime) -> OtaRepository:
    repo = OtaRepository(tmp_path / "repo", KeyRing.create(tmp_path / "keys"), now=lambda: now)
    repo.initialize()
    return repo


def test_stale_timestamp_and_snapshot_are_resigned(tmp_path: Path) -> None:
    from fleet_server.ota.releases import OtaService

    t0 = datetime.now(UTC)
    service = OtaService.__new__(OtaService)
    service.repo = _repo(tmp_path, t0)
    ts0, snap0 = service.repo.timestamp().version, service.repo.snapshot().version
    service.refresh_if_stale(t0 + timedelta(hours=1))
    assert service.repo.timestamp().version == ts0  # fresh: untouched
    service.repo._now = lambda: t0 + timedelta(hours=13)
    service.refresh_if_stale(t0 + timedelta(hours=13))
    assert service.repo.timestamp().version == ts0 + 1 and service.repo.snapshot().version == snap0
    service.repo._now = lambda: t0 + timedelta(days=4)
    service.refresh_if_stale(t0 + timedelta(days=4))
    assert service.repo.snapshot().version == snap0 + 1


def test_snapshot_binds_device_roles_by_hash(tmp_path: Path) -> None:
    repo = _repo(tmp_path, datetime.now(UTC))
    doc = tmp_path / "a.json"
    doc.write_text("{}")
    repo.assign(
        [
            ("d1", repo.add_target_file("devices/d1/assignment", doc)),
            ("d2", repo.add_target_file("devices/d2/assignment", doc)),
        ]
    )
    meta = repo.snapshot().meta
    assert set(meta) == {"targets.json", "director.json", "device-d1.json", "device-d2.json"}
    assert all(m.hashes and m.length for m in meta.values())


def test_root_must_chain(tmp_path: Path) -> None:
    repo = _repo(tmp_path, datetime.now(UTC))
    with pytest.raises(ValueError, match="version"):
        repo.install_root(repo.root_bytes())


def _writer(root: str, keys: str, worker: int, n: int) -> None:
    repo = OtaRepository(Path(root), KeyRing.load(Path(keys)))
    for i in range(n):
        doc = Path(root).parent / f"w{worker}-{i}.json"
        doc.write_text(f'{{"worker": {worker}, "i": {i}}}')
        repo.set_targets([repo.add_target_file(f"models/w{worker}-{i}.json", doc)])
        repo.assign(
            [(f"dev-{worker}-{i}", repo.add_target_file(f"devices/dev-{worker}-{i}/assignment", doc))]
        )


def test_replica_processes_signing_into_one_repository_lose_no_update(tmp_path: Path) -> None:
    """Two server processes sharing the repository folder (replicas on one host): every change
    re-reads the metadata under the cross-process writer lock, so no version is issued twice and
    no target or device role written by one is lost to the other."""
    import multiprocessing

    from tuf.api.metadata import Metadata

    repo = _repo(tmp_path, datetime.now(UTC))
    ctx = multiprocessing.get_context("spawn")
    n = 8
    procs = [
        ctx.Process(target=_writer, args=(str(repo.root_dir), str(tmp_path / "keys" / "keys.json"), w, n))
        for w in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    targets = repo.release_targets()
    assert {f"models/w{w}-{i}.json" for w in range(2) for i in range(n)} <= set(targets)
    assert {f"device-dev-{w}-{i}.json" for w in range(2) for i in range(n)} <= set(repo.snapshot().meta)
    # every targets version was signed exactly once, in order: 1 .. current, no gaps, no overwrite
    current = repo.targets().version
    versions = sorted(
        Metadata.from_bytes(p.read_bytes()).signed.version for p in repo.metadata_dir.glob("*.targets.json")
    )
    assert versions == list(range(1, current + 1))
    assert current == 1 + 2 * n  # the initial version plus one per set_targets
