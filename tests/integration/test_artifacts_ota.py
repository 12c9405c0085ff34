"""OTA through an S3 artifact store (a real moto S3 server): replicas that share the bucket sign
into one repository without losing an update or overwriting a version, a stale writer is fenced
by the timestamp commit, versions left by a dead writer are skipped, a second replica reuses the
stored root instead of forking it, and the repository is served with HTTP Range from the bucket."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from tuf.api.metadata import Metadata  # type: ignore[attr-defined]

from fleet_server.artifacts.s3 import S3Store
from fleet_server.ota.keys import KeyConfigError
from fleet_server.ota.releases import OtaService, assignment_for
from fleet_server.ota.serve import RepositoryFiles
from tests.helpers.s3 import MotoS3, moto_s3


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


def _store(s3: MotoS3, prefix: str) -> S3Store:
    return S3Store(s3.client(), s3.bucket, prefix)


def _replicas(tmp_path: Path, s3: MotoS3, n: int = 2) -> list[OtaService]:
    """`n` services on one bucket prefix, as replicas with the same (copied) keys but no shared
    lock: every race between them is settled by the store alone."""
    prefix = f"r-{uuid.uuid4().hex[:8]}"
    first = OtaService(tmp_path / "a", store=_store(s3, prefix))
    services = [first]
    for i in range(1, n):
        directory = tmp_path / f"r{i}"
        shutil.copytree(tmp_path / "a" / "keys", directory / "keys")
        services.append(OtaService(directory, store=_store(s3, prefix)))
    return services


def _doc(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(f'{{"name": "{name}"}}')
    return path


def test_replicas_racing_on_one_bucket_lose_no_update_and_overwrite_no_version(
    tmp_path: Path, s3: MotoS3
) -> None:
    services = _replicas(tmp_path, s3)
    n = 6
    errors: list[BaseException] = []

    def work(w: int) -> None:
        repo = services[w].repo
        try:
            for i in range(n):
                doc = _doc(tmp_path, f"w{w}-{i}")
                repo.set_targets([repo.add_target_file(f"models/w{w}-{i}.json", doc)])
                repo.assign([(f"dev-{w}-{i}", repo.add_target_file(f"devices/dev-{w}-{i}/assignment", doc))])
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for service in services:  # every replica reads the same, complete state
        repo = service.repo
        assert {f"models/w{w}-{i}.json" for w in range(2) for i in range(n)} <= set(repo.release_targets())
        meta = repo.snapshot().meta
        assert {f"device-dev-{w}-{i}.json" for w in range(2) for i in range(n)} <= set(meta)
        assert assignment_for(service, "dev-1-5") is None  # not an edgeloop assignment document
        assert repo.device_targets("dev-1-5")
    # each committed timestamp version exists once, and the chain is what timestamp.json points at
    store = services[0].store
    names = list(store.list(services[0].repo.metadata_key("")))
    ts_versions = sorted(
        int(k.rsplit("/", 1)[1].split(".")[0]) for k in names if k.endswith(".timestamp.json")
    )
    assert ts_versions == list(range(1, ts_versions[-1] + 1))
    latest = Metadata.from_bytes(store.get(services[0].repo.metadata_key("timestamp.json")))
    assert latest.signed.version == ts_versions[-1]


def test_a_writer_that_loses_the_commit_restarts_on_the_new_state(tmp_path: Path, s3: MotoS3) -> None:
    a, b = _replicas(tmp_path, s3)
    attempts = 0

    def slow_publish() -> None:
        nonlocal attempts
        attempts += 1
        with a.repo.edit_targets() as targets:
            info = a.repo.add_target_file("models/from-a.json", _doc(tmp_path, "a"))
            targets.targets[info.path] = info
        if attempts == 1:  # B commits while A holds signed but uncommitted versions
            b.repo.set_targets([b.repo.add_target_file("models/from-b.json", _doc(tmp_path, "b"))])
        a.repo.publish_metadata()

    a.repo.write(slow_publish)
    assert attempts == 2  # lost the timestamp race once, then won on top of B's commit
    assert {"models/from-a.json", "models/from-b.json"} <= set(b.repo.release_targets())


def test_versions_left_by_a_dead_writer_are_skipped(tmp_path: Path, s3: MotoS3) -> None:
    (a,) = _replicas(tmp_path, s3, 1)
    current = a.repo.targets().version
    orphan = a.store.get(a.repo.metadata_key(f"{current}.targets.json"))
    # a writer signed the next targets and snapshot versions, then died before its commit
    a.store.put(a.repo.metadata_key(f"{current + 1}.targets.json"), orphan)
    snap = a.repo.snapshot().version
    a.store.put(a.repo.metadata_key(f"{snap + 1}.snapshot.json"), b"{}")
    a.repo.set_targets([a.repo.add_target_file("models/after.json", _doc(tmp_path, "after"))])
    assert a.repo.targets().version == current + 2
    assert a.repo.snapshot().version == snap + 2
    assert "models/after.json" in a.repo.release_targets()
    assert a.store.get(a.repo.metadata_key(f"{current + 1}.targets.json")) == orphan  # never overwritten


def test_a_replica_without_the_keys_refuses_to_fork_the_stored_repository(tmp_path: Path, s3: MotoS3) -> None:
    prefix = f"k-{uuid.uuid4().hex[:8]}"
    first = OtaService(tmp_path / "a", store=_store(s3, prefix))
    root = first.repo.root_bytes()
    with pytest.raises(KeyConfigError, match="keys"):
        OtaService(tmp_path / "b", store=_store(s3, prefix))
    shutil.copytree(tmp_path / "a" / "keys", tmp_path / "c" / "keys")
    second = OtaService(tmp_path / "c", store=_store(s3, prefix))
    assert second.repo.root_bytes() == root  # reused, not re-initialized
    assert second.repo.root().version == 1


def test_repository_served_from_the_bucket_with_ranges(tmp_path: Path, s3: MotoS3) -> None:
    (ota,) = _replicas(tmp_path, s3, 1)
    payload = bytes(range(256)) * 1000
    source = tmp_path / "model.bin"
    source.write_bytes(payload)
    info = ota.repo.add_target_file("models/m/r1/model.bin", source)
    ota.repo.set_targets([info])
    url = "/ota/targets/models/m/r1/" + ota.repo.target_key(info).rsplit("/", 1)[1]
    app = Starlette(routes=[Mount("/ota", app=RepositoryFiles(ota.store, ota.repo.prefix))])
    with TestClient(app) as client:
        whole = client.get(url)
        assert whole.status_code == 200 and whole.content == payload
        assert whole.headers["accept-ranges"] == "bytes"
        part = client.get(url, headers={"Range": "bytes=1000-1999"})
        assert part.status_code == 206 and part.content == payload[1000:2000]
        assert part.headers["content-range"] == f"bytes 1000-1999/{len(payload)}"
        tail = client.get(url, headers={"Range": f"bytes={len(payload) - 10}-"})
        assert tail.status_code == 206 and tail.content == payload[-10:]
        assert client.get(url, headers={"Range": "bytes=-5"}).content == payload[-5:]
        past = client.get(url, headers={"Range": f"bytes={len(payload)}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(payload)}"
        head = client.head(url)
        assert head.status_code == 200 and head.headers["content-length"] == str(len(payload))
        assert client.get("/ota/metadata/timestamp.json").status_code == 200
        assert client.get("/ota/targets/models/m/r1/nope.bin").status_code == 404
        assert client.get("/ota/keys/keys.json").status_code == 404  # only metadata/ and targets/
        assert client.post(url).status_code == 405


def test_a_tuf_client_reads_straight_from_the_bucket_and_trusts_metadata_not_the_host(
    tmp_path: Path, s3: MotoS3
) -> None:
    """The bucket (or a CDN in front of it) can serve devices directly: the layout is the
    repository's, the TUF client verifies everything against the root it was provisioned with,
    Range reads work there too, and bytes changed in the bucket after signing are refused."""
    import urllib3
    from tuf.ngclient import Updater

    from agent.errors import IntegrityError
    from agent.ota.fetcher import Downloader, HttpFetcher

    (ota,) = _replicas(tmp_path, s3, 1)
    payload = bytes(range(256)) * 400
    source = tmp_path / "model.onnx"
    source.write_bytes(payload)
    info = ota.repo.add_target_file("models/m/r1/model.onnx", source)
    ota.repo.set_targets([info])
    prefix = ota.store.prefix  # type: ignore[attr-defined]
    public_read = {  # as a bucket behind a CDN, or a public one: anyone may GET the repository
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
             "Resource": f"arn:aws:s3:::{s3.bucket}/{prefix}repo/*"}
        ],
    }  # fmt: skip
    s3.client().put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps(public_read))
    base = f"{s3.endpoint_url}/{s3.bucket}/{prefix}repo"
    (tmp_path / "device").mkdir()
    (tmp_path / "device" / "root.json").write_bytes(ota.store.get(ota.repo.metadata_key("1.root.json")))
    pool = urllib3.PoolManager()
    updater = Updater(
        metadata_dir=str(tmp_path / "device"),
        metadata_base_url=f"{base}/metadata/",
        target_base_url=f"{base}/targets/",
        fetcher=HttpFetcher(pool),
        bootstrap=None,  # the provisioned root.json in metadata_dir
    )
    updater.refresh()
    found = updater.get_targetinfo("models/m/r1/model.onnx")
    assert found is not None and found.length == len(payload)
    url = f"{base}/targets/{ota.repo.target_key(found).split('/targets/', 1)[1]}"
    downloader = Downloader(pool)
    assert downloader.fetch_range(url, 1000, 500) == payload[1000:1500]  # a 206 from the bucket
    got = downloader.download(url, tmp_path / "got.onnx", length=found.length, sha256=found.hashes["sha256"])
    assert got.read_bytes() == payload
    tampered = bytearray(payload)
    tampered[len(payload) // 2] ^= 0xFF
    ota.store.put(ota.repo.target_key(found), bytes(tampered))  # someone with bucket write access
    with pytest.raises(IntegrityError, match="sha256"):
        downloader.download(url, tmp_path / "bad.onnx", length=found.length, sha256=found.hashes["sha256"])
