"""The drift reference of an OTA release on the device: the plan carries it (and old persisted
plans without it still load), the slot keeps it beside its model through promote and rollback, and
the drift feeder builds a new monitor whenever the serving slot's reference changes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.drift.feeder import REFERENCE_FILE, DriftFeeder
from agent.drift.reference import build_reference
from agent.drift.reporter import DriftReporter
from agent.errors import SlotError
from agent.inference.handle import ModelMeta
from agent.ota.trust import Plan, TargetRef
from agent.outbox import TelemetryOutbox
from agent.ports import SystemClock
from agent.slots import BROKEN, CANDIDATE, CURRENT, PREVIOUS, LocalSlotFS, Slots


def _ref(name: str) -> TargetRef:
    return TargetRef(f"models/m/r1/{name}", f"http://x/targets/models/m/r1/{'a' * 64}.{name}", 10, "a" * 64)


def test_plan_round_trips_the_reference_and_loads_plans_saved_without_one() -> None:
    plan = Plan(
        "dep_1", 1, "m", "1", _ref("model.onnx"), None, None, 0.0, drift_reference=_ref(REFERENCE_FILE)
    )
    assert Plan.from_dict(plan.to_dict()) == plan
    old = plan.to_dict()
    del old["drift_reference"]  # an update record persisted by an agent before this field existed
    assert Plan.from_dict(old).drift_reference is None


def _stage(slots: Slots, tmp_path: Path, version: str, reference: bytes | None) -> None:
    artifact = tmp_path / f"m{version}.onnx"
    artifact.write_bytes(f"model {version}".encode())
    slots.stage_candidate(artifact, name="m", version=version)
    if reference is not None:
        slots.add_file(CANDIDATE, REFERENCE_FILE, reference)


def test_reference_moves_with_its_slot_on_promote_and_rollback(tmp_path: Path) -> None:
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    root = tmp_path / "slots"
    _stage(slots, tmp_path, "1", b"ref-1")
    slots.promote()
    _stage(slots, tmp_path, "2", None)  # a release without a reference
    slots.promote()
    assert not (root / CURRENT / REFERENCE_FILE).exists()
    assert (root / PREVIOUS / REFERENCE_FILE).read_bytes() == b"ref-1"
    slots.rollback()
    assert (root / CURRENT / REFERENCE_FILE).read_bytes() == b"ref-1"
    assert not (root / BROKEN / REFERENCE_FILE).exists()
    slots.verify(CURRENT)  # the companion file does not disturb the model's own integrity check


@pytest.mark.parametrize("name", ["model.json", "m1.onnx", "../x.json", "a/b.json", ""])
def test_add_file_never_replaces_the_model_or_leaves_the_slot(tmp_path: Path, name: str) -> None:
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    _stage(slots, tmp_path, "1", None)
    with pytest.raises(SlotError, match="cannot be added"):
        slots.add_file(CANDIDATE, name, b"x")


def test_add_file_needs_a_staged_model(tmp_path: Path) -> None:
    with pytest.raises(SlotError, match="empty"):
        Slots(LocalSlotFS(tmp_path / "slots")).add_file(CANDIDATE, REFERENCE_FILE, b"x")


def test_feeder_rebinds_when_a_swap_brings_another_reference_for_the_same_model(tmp_path: Path) -> None:
    """An OTA release may re-ship the same name, version and artifact file name with a new reference
    (or none): the swap renames slot directories, so only the reference file itself tells them apart."""
    x = np.random.default_rng(0).normal(size=(300, 4))
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    outbox = TelemetryOutbox(tmp_path / "o.db", max_records=100)
    feeder = DriftFeeder(
        lambda n, v: DriftReporter(outbox, clock=SystemClock(), model_name=n, model_version=v)
    )

    def serving() -> ModelMeta:
        info = slots.read(CURRENT)
        assert info is not None
        return ModelMeta(info.name, info.version, CURRENT, slots.artifact_path(CURRENT), info.sha256)

    try:
        _stage(slots, tmp_path, "1", build_reference(x, meta={"tag": "a"}).to_bytes())
        slots.promote()
        feeder.feed(serving(), [])
        first = feeder.monitor
        assert first is not None and feeder.status == "monitoring m@1"
        feeder.feed(serving(), [])
        assert feeder.monitor is first  # no swap: the monitor (and its windows) is kept

        _stage(slots, tmp_path, "1", build_reference(x, meta={"tag": "b"}).to_bytes())
        slots.promote()
        feeder.feed(serving(), [])
        second = feeder.monitor
        assert second is not None and second is not first

        _stage(slots, tmp_path, "1", None)
        slots.promote()
        feeder.feed(serving(), [])
        assert feeder.monitor is None and "ships no drift_reference.json" in feeder.status

        slots.rollback()  # back to the slot holding reference "b"
        feeder.feed(serving(), [])
        assert feeder.monitor is not None and feeder.status == "monitoring m@1"
    finally:
        outbox.close()
