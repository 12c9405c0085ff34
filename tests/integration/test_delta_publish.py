"""Releases published by the real `OtaService` carry a signed format-2 chunk manifest; an agent
resolving them through TUF (real `Trust`, loopback HTTP) rebuilds the next release by delta, from
an inline patch or a patch file, and the result hashes to the signed target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import urllib3
from onnx import numpy_helper

from agent.ota.fetcher import Downloader, HttpFetcher
from agent.ota.transfer import Transfer
from agent.ota.trust import Plan, Trust
from protos.edgeloop.chunk_manifest import decode
from tests.integration.test_ota_support import FleetSide, fleet_side
from tests.unit.agent.test_manifest_format import _onnx


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetSide]:
    yield from fleet_side(tmp_path / "server")


def _nudged(src: Path, dest: Path, scale: float) -> Path:
    model = onnx.load(src)
    head = model.graph.initializer[-1]
    head.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(head) * np.float32(scale), head.name))
    onnx.save(model, dest)
    return dest


def test_published_releases_rebuild_by_delta_through_tuf(tmp_path: Path, fleet: FleetSide) -> None:
    v1 = _onnx(tmp_path / "v1.onnx")
    v2 = tmp_path / "v2.onnx"  # one weight's lowest mantissa bit: a patch of a few bytes, inline
    data = bytearray(v1.read_bytes())
    data[-600] ^= 1
    v2.write_bytes(bytes(data))
    v3 = _nudged(v2, tmp_path / "v3.onnx", 1.001)  # the whole head moves: a patch file
    pool = urllib3.PoolManager()
    trust = Trust(
        device_id="dev-1", metadata_dir=tmp_path / "dev" / "metadata", base_url=fleet.http.base_url,
        fetcher=HttpFetcher(pool), bootstrap_root=fleet.ota.repo.metadata_dir / "1.root.json",
    )  # fmt: skip
    held: list[tuple[Path, str]] = []
    (tmp_path / "dev" / "downloads").mkdir(parents=True)
    (tmp_path / "dev" / "manifests").mkdir()
    transfer = Transfer(
        downloader=Downloader(pool), downloads=tmp_path / "dev" / "downloads",
        manifests=tmp_path / "dev" / "manifests", held=lambda: held,
    )  # fmt: skip

    def install(model: Path, version: str) -> tuple[Plan, str]:
        fleet.deploy(fleet.publish(model, version, filename="model.onnx"), "dev-1")
        plan = trust.resolve()
        assert plan is not None and plan.manifest is not None and plan.manifest.path.endswith("chunks.bin")
        dest = tmp_path / "dev" / f"v{version}.onnx"
        how = transfer.fetch(plan, dest, use_delta=True)
        assert dest.read_bytes() == model.read_bytes()  # and Transfer checked the signed sha256
        (tmp_path / "dev" / "manifests" / f"{plan.artifact.sha256}.json").write_bytes(
            transfer.small(plan.manifest)
        )
        held[:] = [(dest, plan.artifact.sha256)]
        return plan, how

    _, how = install(v1, "1")
    assert how.startswith("full")
    plan, how = install(v2, "2")
    manifest = decode(transfer.small(plan.manifest))  # type: ignore[arg-type]
    assert [c.patch.inline != b"" for c in manifest.chunks if c.patch] == [True]
    assert how.startswith("delta") and transfer.last.patched == 1
    assert transfer.last.fetched == 0  # past the signed manifest (fetched while planning): nothing
    plan, how = install(v3, "3")
    assert how.startswith("delta") and transfer.last.patched == 1
    patches = list((fleet.ota.repo.targets_dir / "patches").glob("*.p2"))
    assert len(patches) == 1 and transfer.last.fetched < plan.artifact.length / 4
