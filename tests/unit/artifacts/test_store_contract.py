"""The `ArtifactStore` contract, run against both implementations: the filesystem and S3 (a real
moto S3 server over HTTP)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleet_server.artifacts.factory import store_from_url
from fleet_server.artifacts.fs import FilesystemStore
from fleet_server.artifacts.port import ArtifactNotFoundError, ArtifactStore, ArtifactStoreConfigError
from fleet_server.artifacts.s3 import S3Store
from tests.helpers.s3 import MotoS3, moto_s3


@pytest.fixture(scope="module")
def s3() -> Iterator[MotoS3]:
    with moto_s3() as server:
        yield server


@pytest.fixture(params=["fs", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "fs":
        return FilesystemStore(tmp_path / "store")
    server: MotoS3 = request.getfixturevalue("s3")
    return S3Store(server.client(), server.bucket, f"t-{uuid.uuid4().hex[:8]}")


def test_put_get_stat_overwrite(store: ArtifactStore) -> None:
    store.put("repo/metadata/timestamp.json", b"v1")
    assert store.get("repo/metadata/timestamp.json") == b"v1"
    store.put("repo/metadata/timestamp.json", b"version-2")
    assert store.get("repo/metadata/timestamp.json") == b"version-2"
    assert store.stat("repo/metadata/timestamp.json").size == 9
    assert store.exists("repo/metadata/timestamp.json")


def test_missing_key_is_not_found_everywhere(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFoundError):
        store.get("blobs/nope")
    with pytest.raises(ArtifactNotFoundError):
        store.stat("blobs/nope")
    with pytest.raises(ArtifactNotFoundError):
        store.open_range("blobs/nope", 0, 10)
    with pytest.raises(ArtifactNotFoundError):
        store.fetch_to("blobs/nope", tmp_path / "out")
    assert not store.exists("blobs/nope")
    store.delete("blobs/nope")  # deleting a missing key is fine


def test_range_reads_stream_the_asked_span(store: ArtifactStore) -> None:
    data = bytes(range(256)) * 1024  # 256 KiB: several stream blocks
    store.put("targets/m/abc.onnx", data)
    assert b"".join(store.open_range("targets/m/abc.onnx", 0, len(data))) == data
    assert b"".join(store.open_range("targets/m/abc.onnx", 1000, 70_000)) == data[1000:70_000]
    assert b"".join(store.open_range("targets/m/abc.onnx", len(data) - 1, len(data))) == data[-1:]
    assert b"".join(store.open_range("targets/m/abc.onnx", 5, 5)) == b""


def test_put_if_absent_has_one_winner(store: ArtifactStore) -> None:
    assert store.put_if_absent("repo/metadata/3.snapshot.json", b"first")
    assert not store.put_if_absent("repo/metadata/3.snapshot.json", b"second")
    assert store.get("repo/metadata/3.snapshot.json") == b"first"


def test_put_if_absent_concurrent_writers_one_wins(store: ArtifactStore) -> None:
    results: dict[int, bool] = {}
    barrier = threading.Barrier(6)

    def write(i: int) -> None:
        barrier.wait()
        results[i] = store.put_if_absent("repo/metadata/7.timestamp.json", f"writer-{i}".encode())

    threads = [threading.Thread(target=write, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, ok in results.items() if ok]
    assert len(winners) == 1
    assert store.get("repo/metadata/7.timestamp.json") == f"writer-{winners[0]}".encode()


def test_files_in_and_out(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(b"\x01" * 300_000)
    store.put_file("blobs/aa", src)
    assert store.put_file_if_absent("blobs/bb", src)
    assert not store.put_file_if_absent("blobs/bb", src)
    out = tmp_path / "copy.bin"
    store.fetch_to("blobs/bb", out)
    assert out.read_bytes() == src.read_bytes()
    assert sorted(store.list("blobs/")) == ["blobs/aa", "blobs/bb"]
    store.delete("blobs/aa")
    assert sorted(store.list("blobs/")) == ["blobs/bb"]


def test_readers_never_see_half_written_objects(store: ArtifactStore) -> None:
    """A reader racing a writer that replaces a 1 MiB object sees the old or the new bytes whole."""
    old, new = b"a" * (1 << 20), b"b" * (1 << 20)
    store.put("repo/metadata/timestamp.json", old)
    seen: list[bytes] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(store.get("repo/metadata/timestamp.json"))

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(6):
        store.put("repo/metadata/timestamp.json", new if i % 2 == 0 else old)
    done.set()
    reader.join()
    assert seen and all(s in (old, new) for s in seen)


def test_keys_must_be_clean_relative_paths(store: ArtifactStore) -> None:
    for bad in ("../etc/passwd", "/abs", "a/../../b", "a//b", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x")


def test_factory_urls(tmp_path: Path) -> None:
    assert isinstance(store_from_url("", default_dir=tmp_path), FilesystemStore)
    shared = store_from_url(f"file://{tmp_path}/shared", default_dir=tmp_path)
    assert isinstance(shared, FilesystemStore) and shared.root == tmp_path / "shared"
    s3 = store_from_url("s3://bucket/some/prefix", default_dir=tmp_path, s3_endpoint_url="http://127.0.0.1:1")
    assert s3.describe() == "s3://bucket/some/prefix/"
    for bad in ("file://relative/x", "s3:///nobucket", "gs://b/p"):
        with pytest.raises(ArtifactStoreConfigError):
            store_from_url(bad, default_dir=tmp_path)
