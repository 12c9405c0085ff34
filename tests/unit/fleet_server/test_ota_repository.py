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


def test_targets_director_and_device_roles_are_resigned_before_they_expire(tmp_path: Path) -> None:
    """A fleet that publishes nothing for weeks keeps valid metadata: without the sweep the director
    and every device role expire 30 days after they were last signed and devices refuse all updates."""
    from fleet_server.ota.releases import OtaService

    t0 = datetime.now(UTC).replace(microsecond=0)
    service = OtaService.__new__(OtaService)
    repo = service.repo = _repo(tmp_path, t0)
    doc = tmp_path / "a.json"
    doc.write_text("{}")
    repo.assign([(d, repo.add_target_file(f"devices/{d}/assignment", doc)) for d in ("d1", "d2", "d3")])
    before = {role: repo._load(role).signed for role in ("targets", "director", "device-d1")}

    service.refresh_if_stale(t0 + timedelta(days=10))  # 20 of 30 days left: nothing to do
    assert {r: repo._load(r).signed.version for r in before} == {r: m.version for r, m in before.items()}

    for day in range(1, 200):  # the signer duty ticking for 200 days, nothing published
        now = t0 + timedelta(days=day, minutes=11 * day)  # past the 10-minute sweep throttle each time
        repo._now = lambda now=now: now
        service.refresh_if_stale(now)
        for role in ("targets", "director", "device-d1", "device-d2", "device-d3"):
            left = repo._load(role).signed.expires - now
            assert left >= repo.expiry.for_role(role) / 2 - timedelta(days=1), (day, role, left)
        assert repo.timestamp().expires > now and repo.snapshot().expires > now
    after = repo._load("device-d2")
    assert after.signed.version > before["device-d1"].version  # re-signed, same assignment
    assert set(after.signed.targets) == {"devices/d2/assignment"}
    repo._load("director").verify_delegate("device-d2", after)


def test_the_role_sweep_is_throttled_and_skips_roles_another_writer_refreshed(tmp_path: Path) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    repo = _repo(tmp_path, t0)
    later = t0 + timedelta(days=20)
    repo._now = lambda: later
    assert set(repo.refresh_expiring_roles(later)) == {"director"}  # targets: 90 days, 70 left
    v = repo._load("director").signed.version
    assert repo.refresh_expiring_roles(later + timedelta(minutes=1)) == []  # throttled
    other = OtaRepository(tmp_path / "repo", repo.keys, now=lambda: later)  # a second replica
    assert other.refresh_expiring_roles(later + timedelta(minutes=1)) == []  # fresh now: nothing
    assert repo._load("director").signed.version == v
