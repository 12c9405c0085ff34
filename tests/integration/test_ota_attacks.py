"""The tuf-conformance attack scenarios, re-expressed against our repository and agent over real
HTTP: every attack is refused as the TUF specification says, and nothing reaches the model slots.

Each test starts from a device that committed release v1 through OTA (so it holds v1's chunk
manifest and the delta path is exercised too), then an attacker with control of the mirror (the
static files) or of one online key tries to make it install something else.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.metadata import Metadata  # type: ignore[attr-defined]
from tuf.api.serialization.json import JSONSerializer

from agent.drift.feeder import REFERENCE_FILE
from fleet_server.ota.repository import rotate_root
from tests.integration.test_ota_support import (
    Device_,
    FleetSide,
    check,
    drift_references,
    fleet_side,
    models,
    push_desired,
    slot_files,
    start_device,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[FleetSide]:
    yield from fleet_side(tmp_path / "server")


async def _device_on_v1(tmp_path: Path, fleet: FleetSide, device_id: str = "dev-1") -> Device_:
    dev = await start_device(tmp_path, fleet, device_id)
    dep = fleet.deploy(fleet.publish(models().v1, "1"), device_id)
    await check(dev)
    assert dev.reports.chain(dep)[-1] == "committed"
    return dev


def _meta(fleet: FleetSide, name: str) -> Path:
    return fleet.ota.repo.metadata_dir / name


def _latest(fleet: FleetSide, role: str) -> Path:
    version = fleet.ota.repo.open(role).signed.version
    return _meta(fleet, f"{version}.{role}.json")


def _run(
    tmp_path: Path, fleet: FleetSide, attack: object, *, expect_refused_metadata: bool, **publish: Any
) -> Device_:
    """Set up v1, publish v2 for the device, apply `attack`, check; assert nothing was installed."""

    async def scenario() -> Device_:
        dev = await _device_on_v1(tmp_path, fleet)
        try:
            before = slot_files(dev.root)
            serving = dev.service.serving()
            count = len(dev.reports.items)
            seq = fleet.publish(models().v2, "2", **publish)
            dep = fleet.deploy(seq, "dev-1")
            push_desired(dev, dep, seq)  # what the fleet server pushes over the device's mTLS stream
            attack(dev)  # type: ignore[operator]
            await check(dev)
            assert slot_files(dev.root) == before
            assert dev.service.serving() == serving
            chain = dev.reports.chain(dep)
            if expect_refused_metadata:
                # nothing installed, and the refusal is reported with its reason against the deployment
                assert chain == ["refused"] and len(dev.reports.items) == count + 1, dev.reports.items
                refused = dev.reports.items[-1]
                assert refused["event"] == "metadata_refused" and refused["release_seq"] == seq
                assert dev.client.last_error and refused["detail"] == dev.client.last_error
                await check(dev)  # the same refusal is not reported again on every check
                assert len(dev.reports.items) == count + 1
            else:
                assert chain[-1] == "failed" and "committed" not in chain, dev.reports.items
            return dev
        finally:
            await dev.service.stop()

    return asyncio.run(scenario())


def _chunks(manifest: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, length, sha256) of each chunk of a format-2 chunk manifest."""
    from protos.edgeloop.chunk_manifest import decode

    out, pos = [], 0
    for c in decode(manifest).chunks:
        out.append((pos, c.length, c.sha256))
        pos += c.length
    return out


def test_tampered_artifact_is_refused_on_delta_and_full_paths(tmp_path: Path, fleet: FleetSide) -> None:
    def tamper(_: Device_) -> None:
        # Flip a byte in a chunk the device does not hold (the fine-tuned head), so the delta path
        # has to fetch it; unchanged chunks come from the local v1 and never touch the mirror.
        targets = fleet.ota.repo.targets_dir / "models" / "digits"
        manifests = [_chunks(next((targets / r).glob("*.chunks.bin")).read_bytes()) for r in ("r1", "r2")]
        held = {c[2] for c in manifests[0]}
        offset, length = next(c[:2] for c in manifests[1] if c[2] not in held and c[1] > 64)
        target = next((targets / "r2").glob("*.model.onnx"))
        data = bytearray(target.read_bytes())
        data[offset + length // 2] ^= 0xFF
        target.write_bytes(bytes(data))
        patches = list((fleet.ota.repo.targets_dir / "patches").glob("*.p2"))
        assert patches  # the head's chunk ships as a patch against v1: tamper it as well
        for patch in [*patches, next((targets / "r2").glob("*.model.onnx.xz"))]:  # and the xz artifact
            raw = bytearray(patch.read_bytes())
            raw[len(raw) // 2] ^= 0xFF
            patch.write_bytes(bytes(raw))

    dev = _run(tmp_path, fleet, tamper, expect_refused_metadata=False)
    assert "does not match the signed sha256" in dev.reports.items[-1]["detail"]


def test_oversized_artifact_endless_data_is_refused(tmp_path: Path, fleet: FleetSide) -> None:
    def endless(dev: Device_) -> None:
        for target in (fleet.ota.repo.targets_dir / "models" / "digits" / "r2").glob("*.model.onnx*"):
            target.write_bytes(target.read_bytes() + b"\0" * (1 << 20))
        (dev.root / "ota" / "manifests").mkdir(exist_ok=True)
        shutil.rmtree(dev.root / "ota" / "manifests")  # force the full-download path

    dev = _run(tmp_path, fleet, endless, expect_refused_metadata=False)
    assert "more than the signed length" in dev.reports.items[-1]["detail"]


@pytest.mark.parametrize("how", ["modified", "grown"])
def test_tampered_drift_reference_fails_the_install(tmp_path: Path, fleet: FleetSide, how: str) -> None:
    """The drift reference is a signed target like the artifact: bytes changed on the mirror after
    signing fail the install before anything is staged, and the device keeps its model."""

    def tamper(_: Device_) -> None:
        target = next(
            (fleet.ota.repo.targets_dir / "models" / "digits" / "r2").glob("*.drift_reference.json")
        )
        data = target.read_bytes()
        assert b'"tag":"b"' in data
        # still a well-formed reference (another tag), or the same one with trailing bytes
        target.write_bytes(
            data.replace(b'"tag":"b"', b'"tag":"x"') if how == "modified" else data + b" " * 4096
        )

    dev = _run(tmp_path, fleet, tamper, expect_refused_metadata=False, drift_reference=drift_references()[1])
    last = dev.reports.items[-1]
    assert (last["from"], last["to"]) == ("verifying", "failed"), dev.reports.items
    assert "drift reference refused" in last["detail"]
    expected = "does not match the signed sha256" if how == "modified" else "more than the signed length"
    assert expected in last["detail"], last["detail"]
    assert not list((dev.root / "slots").glob(f"*/{REFERENCE_FILE}"))


def test_timestamp_signed_with_wrong_key_is_refused(tmp_path: Path, fleet: FleetSide) -> None:
    def wrong_key(_: Device_) -> None:
        md = Metadata.from_bytes(_meta(fleet, "timestamp.json").read_bytes())
        md.signed.version += 1
        md.signatures.clear()
        md.sign(CryptoSigner.generate_ed25519())
        _meta(fleet, "timestamp.json").write_bytes(md.to_bytes(JSONSerializer()))

    _run(tmp_path, fleet, wrong_key, expect_refused_metadata=True)


def test_expired_timestamp_freeze_keeps_serving_and_installs_nothing(
    tmp_path: Path, fleet: FleetSide
) -> None:
    def freeze(_: Device_) -> None:
        repo = fleet.ota.repo
        repo._now = lambda: datetime.now(UTC) - timedelta(days=2)
        repo.write(lambda: repo.do_timestamp(force=True))

    _run(tmp_path, fleet, freeze, expect_refused_metadata=True)


def test_snapshot_rollback_is_refused(tmp_path: Path, fleet: FleetSide) -> None:
    def rollback(_: Device_) -> None:
        # The device already trusts the snapshot of the v1 deployment; serve version 1 as the latest.
        _latest(fleet, "snapshot").write_bytes(_meta(fleet, "1.snapshot.json").read_bytes())

    _run(tmp_path, fleet, rollback, expect_refused_metadata=True)


def test_targets_rollback_is_refused(tmp_path: Path, fleet: FleetSide) -> None:
    def rollback(_: Device_) -> None:
        _latest(fleet, "targets").write_bytes(_meta(fleet, "1.targets.json").read_bytes())

    _run(tmp_path, fleet, rollback, expect_refused_metadata=True)


def test_mix_and_match_another_devices_role_is_refused(tmp_path: Path, fleet: FleetSide) -> None:
    """A validly signed director role of another device served in place of this device's role."""

    def mix(_: Device_) -> None:
        fleet.deploy(fleet.publish(models().scrambled, "evil"), "dev-2")
        theirs = _latest(fleet, "device-dev-2").read_bytes()
        _latest(fleet, "device-dev-1").write_bytes(theirs)

    _run(tmp_path, fleet, mix, expect_refused_metadata=True)


def test_oversized_timestamp_endless_data_is_refused(tmp_path: Path, fleet: FleetSide) -> None:
    def endless(_: Device_) -> None:
        _meta(fleet, "timestamp.json").write_bytes(b"{" + b" " * (1 << 20) + b"}")

    _run(tmp_path, fleet, endless, expect_refused_metadata=True)


def test_device_sees_only_its_own_assignment(tmp_path: Path, fleet: FleetSide) -> None:
    async def scenario() -> None:
        dev = await _device_on_v1(tmp_path, fleet)
        try:
            before = slot_files(dev.root)
            count = len(dev.reports.items)
            fleet.deploy(fleet.publish(models().v2, "2"), "dev-2")
            await check(dev)
            assert len(dev.reports.items) == count and slot_files(dev.root) == before
            assert dev.service.serving().version == "1"  # type: ignore[union-attr]
        finally:
            await dev.service.stop()

    asyncio.run(scenario())


def test_root_rotation_threshold_up_and_down(tmp_path: Path, fleet: FleetSide) -> None:
    """1-of-1 -> 2-of-2 (signed by old and new keys) -> 1-of-1; a root signed only by new keys is refused
    by the server and, served behind its back, by the device."""
    repo = fleet.ota.repo
    far = datetime.now(UTC) + timedelta(days=365)
    old = repo.keys.signers("root")
    new2 = [CryptoSigner.generate_ed25519() for _ in range(2)]

    async def scenario() -> None:
        dev = await _device_on_v1(tmp_path, fleet)
        try:
            up = rotate_root(
                repo.root_bytes(), old_signers=old, new_keys=[s.public_key for s in new2], threshold=2,
                new_signers=new2, expires=far,
            )  # fmt: skip
            assert repo.install_root(up) == 2
            down_signer = CryptoSigner.generate_ed25519()
            rogue = rotate_root(
                repo.root_bytes(), old_signers=[], new_keys=[down_signer.public_key], threshold=1,
                new_signers=[down_signer], expires=far,
            )  # fmt: skip
            with pytest.raises(Exception, match="signed by 0/2 keys"):
                repo.install_root(rogue)
            down = rotate_root(
                repo.root_bytes(), old_signers=new2, new_keys=[down_signer.public_key], threshold=1,
                new_signers=[down_signer], expires=far,
            )  # fmt: skip
            assert repo.install_root(down) == 3
            dep = fleet.deploy(fleet.publish(models().v2, "2"), "dev-1")
            await check(dev)
            assert dev.reports.chain(dep)[-1] == "committed"
            assert (dev.root / "ota" / "metadata" / "root_history" / "3.root.json").exists()
            # v4 signed by the new key only (not by v3's key holder's threshold): refused on device.
            md = Metadata.from_bytes(rogue)
            md.signed.version = 4
            md.signatures.clear()
            md.sign(CryptoSigner.generate_ed25519())
            (repo.metadata_dir / "4.root.json").write_bytes(md.to_bytes(JSONSerializer()))
            count = len(dev.reports.items)
            fleet.deploy(fleet.publish(models().v1, "1-again"), "dev-1")
            await check(dev)
            assert len(dev.reports.items) == count and "Unsigned" in dev.client.last_error
        finally:
            await dev.service.stop()

    asyncio.run(scenario())
