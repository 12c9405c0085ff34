"""Config, backoff, outbox bound, reconcile table."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from agent.backoff import Backoff
from agent.config import load
from agent.errors import ConfigError, StorageError
from agent.outbox import TelemetryOutbox
from agent.reconcile import ApplyLabels, ApplySettings, InstallModel, MarkApplied, RemoveModel, reconcile
from agent.state import AgentSettings, DesiredState, ModelAssignment, ObservedState, SlotState


def test_config_toml_then_env_override(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[device]\nid = "pi-7"\nprofile = "raspberry-pi-4"\n[telemetry]\ninterval_s = 2.5\n')
    cfg = load(
        path, env={"EDGELOOP_AGENT_TELEMETRY_INTERVAL_S": "9", "EDGELOOP_AGENT_SYNC_BACKOFF_MAX_S": "12"}
    )
    assert cfg.device.id == "pi-7" and cfg.device.profile == "raspberry-pi-4"
    assert cfg.telemetry.interval_s == 9.0 and cfg.sync.backoff_max_s == 12.0


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[device]\nnope = 1\n", {}, "unknown key"),
        ("[wat]\n", {}, "unknown config section"),
        ("", {"EDGELOOP_AGENT_TELEMETRY_BATCH_MAX": "abc"}, "expected int"),
        ("", {"EDGELOOP_AGENT_TELEMETRY_BATCH_MAX": "0"}, "batch_max"),
        ("not = [toml", {}, "cannot read"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path, env=env)


def test_backoff_grows_caps_and_jitters() -> None:
    b = Backoff(0.5, 8.0, 2.0, 0.2, random.Random(3))
    delays = [b.next_delay() for _ in range(8)]
    assert delays[0] == pytest.approx(0.5, rel=0.21)
    assert delays[3] == pytest.approx(4.0, rel=0.21)
    assert max(delays) <= 8.0 and delays[-1] >= 6.4
    assert len(set(delays)) == len(delays)  # jittered
    b.reset()
    assert b.next_delay() <= 0.6


def test_outbox_drops_oldest_and_counts(tmp_path: Path) -> None:
    box = TelemetryOutbox(tmp_path / "o.db", max_records=10)
    for i in range(25):
        box.append(timestamp_ms=i, kind="k", metrics={"v": float(i)})
    stats = box.stats()
    assert (stats.queued, stats.dropped_total, stats.last_seq) == (10, 15, 25)
    assert [r.seq for r in box.peek(after_seq=0, limit=100)] == list(range(16, 26))
    assert box.ack([16, 17]) == 2
    # seq 3 was dropped for space while in flight, then acked: it was delivered after all.
    assert box.ack([3]) == 0
    assert box.stats().dropped_total == 14
    box.close()
    reopened = TelemetryOutbox(tmp_path / "o.db", max_records=10)
    assert reopened.stats().queued == 8
    assert reopened.stats().dropped_total == 14
    assert reopened.append(timestamp_ms=0, kind="k", metrics={}) == 26  # seq never reused


def test_outbox_corrupt_file_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StorageError):
        TelemetryOutbox(path, max_records=10)


def test_reconcile_table() -> None:
    assert reconcile(None, ObservedState()) == []
    assert reconcile(DesiredState(generation=1), ObservedState(applied_generation=1)) == []
    model = ModelAssignment("current", "digits", "2")
    actions = reconcile(
        DesiredState(
            generation=4, settings=AgentSettings(report_interval_s=5), labels={"a": "b"}, models=(model,)
        ),
        ObservedState(
            applied_generation=3, slots=(SlotState("current", "digits", "1"), SlotState("old", "x", "1"))
        ),
    )
    assert actions == [
        ApplySettings(AgentSettings(report_interval_s=5)),
        ApplyLabels({"a": "b"}),
        InstallModel(model),
        RemoveModel("old"),
        MarkApplied(4),
    ]
