"""Model slots: promote/rollback/refuse on a real directory, and power loss at every step (fake FS)."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath

import pytest

from agent.errors import IntegrityError, SlotError
from agent.slots import BROKEN, CANDIDATE, CURRENT, POINTER, PREVIOUS, LocalSlotFS, Slots


class PowerLossError(Exception):
    """The fake cut the power: nothing after this operation happened."""


class MemorySlotFS:
    """Working in-memory `SlotFS`: a dict of files; fails every mutation after `budget` ones."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.budget: int | None = None
        self.mutations = 0

    def _tick(self) -> None:
        if self.budget is not None and self.mutations >= self.budget:
            raise PowerLossError
        self.mutations += 1

    def path(self, rel: str) -> Path:
        return Path(PurePosixPath("/mem", rel))

    def exists(self, rel: str) -> bool:
        return rel in self.files or any(k.startswith(rel + "/") for k in self.files)

    def read_bytes(self, rel: str) -> bytes | None:
        return self.files.get(rel)

    def write_atomic(self, rel: str, data: bytes) -> None:
        self._tick()
        self.files[rel] = data

    def copy_in(self, source: Path, rel: str) -> None:
        self._tick()
        self.files[rel] = source.read_bytes()

    def rename(self, src: str, dst: str) -> None:
        self._tick()
        assert not self.exists(dst), f"rename onto existing {dst}"
        for key in [k for k in self.files if k.startswith(src + "/")]:
            self.files[dst + key[len(src) :]] = self.files.pop(key)

    def remove_tree(self, rel: str) -> None:
        keys = [k for k in self.files if k.startswith(rel + "/")]
        if not keys:
            return
        for key in keys:  # power can fail half-way through a delete
            self._tick()
            del self.files[key]


def _artifact(tmp_path: Path, version: str) -> Path:
    path = tmp_path / f"model-{version}.onnx"
    path.write_bytes(f"weights {version}".encode())
    return path


def _versions(slots: Slots) -> dict[str, str | None]:
    return {slot: (info.version if info else None) for slot, info in slots.listing().items()}


def test_promote_rollback_refuse_on_a_real_directory(tmp_path: Path) -> None:
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    for version in ("1", "2"):
        slots.stage_candidate(_artifact(tmp_path, version), name="digits", version=version)
        slots.promote()
    assert _versions(slots) == {CURRENT: "2", PREVIOUS: "1", CANDIDATE: None, BROKEN: None}
    assert slots.artifact_path(CURRENT).read_bytes() == b"weights 2"
    slots.stage_candidate(_artifact(tmp_path, "3"), name="digits", version="3")
    slots.refuse_candidate("warm-up failed")
    broken = slots.read(BROKEN)
    assert broken is not None
    assert (broken.version, broken.reason) == ("3", "warm-up failed")
    assert slots.rollback().version == "1"
    assert _versions(slots) == {CURRENT: "1", PREVIOUS: None, CANDIDATE: None, BROKEN: "2"}
    pointer = json.loads((tmp_path / "slots" / POINTER).read_text())
    assert pointer == {"generation": 4, "pending": None}
    assert not list((tmp_path / "slots").glob(".*tmp"))


def test_refusals_without_a_source_slot(tmp_path: Path) -> None:
    slots = Slots(LocalSlotFS(tmp_path))
    with pytest.raises(SlotError, match="no candidate"):
        slots.promote()
    with pytest.raises(SlotError, match="no previous"):
        slots.rollback()
    with pytest.raises(SlotError, match="empty"):
        slots.artifact_path(CURRENT)
    with pytest.raises(SlotError, match="cannot read artifact"):
        slots.stage_candidate(tmp_path / "missing.onnx", name="m", version="1")


def test_corrupt_pointer_is_a_slot_error(tmp_path: Path) -> None:
    (tmp_path / POINTER).write_text("{not json")
    with pytest.raises(SlotError, match="corrupt"):
        Slots(LocalSlotFS(tmp_path)).recover()


def _prepared(tmp_path: Path) -> tuple[MemorySlotFS, Slots]:
    fs = MemorySlotFS()
    slots = Slots(fs)
    for version in ("1", "2"):
        slots.stage_candidate(_artifact(tmp_path, version), name="digits", version=version)
        slots.promote()
    slots.stage_candidate(_artifact(tmp_path, "3"), name="digits", version="3")
    return fs, slots


@pytest.mark.parametrize("operation", ["promote", "rollback"])
def test_power_loss_at_every_step_recovers_to_old_or_new(tmp_path: Path, operation: str) -> None:
    before = {"promote": {CURRENT: "2", PREVIOUS: "1"}, "rollback": {CURRENT: "2", PREVIOUS: "1"}}[operation]
    after = {"promote": {CURRENT: "3", PREVIOUS: "2"}, "rollback": {CURRENT: "1", BROKEN: "2"}}[operation]
    outcomes = set()
    for budget in range(20):
        fs, slots = _prepared(tmp_path)
        fs.budget, fs.mutations = budget, 0
        try:
            getattr(slots, operation)()
            completed = True
        except PowerLossError:
            completed = False
        fs.budget = None
        rebooted = Slots(fs)
        rebooted.recover()
        state = _versions(rebooted)
        seen = {k: state[k] for k in before} if state[CURRENT] == before[CURRENT] else None
        if seen == before:
            assert not completed, "an operation that returned must not be undone"
            outcomes.add("old")
        else:
            assert {k: state[k] for k in after} == after, (budget, state)
            outcomes.add("new")
        assert rebooted.read(CURRENT) is not None
    assert outcomes == {"old", "new"}


def test_verify_detects_changed_bytes(tmp_path: Path) -> None:
    slots = Slots(LocalSlotFS(tmp_path / "slots"))
    slots.stage_candidate(_artifact(tmp_path, "1"), name="digits", version="1")
    slots.promote()
    assert slots.verify(CURRENT).version == "1"
    slots.artifact_path(CURRENT).write_bytes(b"weights 2")
    with pytest.raises(IntegrityError, match="expected"):
        slots.verify(CURRENT)
    with pytest.raises(SlotError, match="empty"):
        slots.verify(PREVIOUS)
