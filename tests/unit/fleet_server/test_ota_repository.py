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
