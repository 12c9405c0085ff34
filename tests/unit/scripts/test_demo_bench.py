"""The demo benchmark's own machinery (bench/demo/run.py): interleaving, timeline reading, summary.

The real demo takes minutes, so a stand-in `demo.py` (a few lines of Python writing a timeline the
way scripts/demo.py does, with deltas or full files per flag) is run instead: the bench must pass
`--quick --work DIR [--full-files]`, read what the run left even when it failed, and compute the
medians and the delta/full ratio from the timelines.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from bench.demo import run as bench

FAKE_DEMO = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    args = sys.argv[1:]
    work = Path(args[args.index("--work") + 1])
    assert "--quick" in args
    full = "--full-files" in args
    fail = "--fail" in args
    sent = 400_000 if full else 40_000
    stages = [
        {"key": "fleet_up", "title": "fleet", "t_start_s": 0, "wall_s": 10.0 + full, "ok": True},
        {"key": "rollout_v2", "title": "v2", "t_start_s": 11, "wall_s": 20.0 + 5 * full, "ok": not fail},
    ]
    per = [{"device_id": d, "bytes": sent // 2, "full_bytes": 200_000, "delta": not full} for d in "ab"]
    tl = {"schema": 1, "wall_s": 31.0 + 6 * full, "stages": stages,
          "ota": {"delta_bytes": sent, "full_bytes": 400_000, "per_device": per,
                  "demo_total_bytes": sent + 50_000}}
    work.mkdir(parents=True, exist_ok=True)
    (work / "timeline.json").write_text(json.dumps(tl))
    sys.exit(1 if fail else 0)
    """
)


@pytest.fixture
def fake_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    demo = tmp_path / "demo.py"
    demo.write_text(FAKE_DEMO)
    monkeypatch.setattr(bench, "DEMO", demo)
    return demo


def test_runs_are_interleaved_and_summarized_per_arm(
    fake_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.json"
    assert bench.main(["--reps", "2", "--work", str(tmp_path / "runs"), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["arm"] for r in data["runs"]] == ["delta", "full", "full", "delta"]
    arms = data["summary"]["arms"]
    assert arms["delta"]["stages"]["rollout_v2"]["wall_s"] == {
        "n": 2,
        "median": 20.0,
        "min": 20.0,
        "max": 20.0,
    }
    assert arms["full"]["stages"]["rollout_v2"]["wall_s"]["median"] == 25.0
    assert arms["delta"]["ota_sent_bytes"]["median"] == 40_000
    assert arms["full"]["ota_sent_bytes"]["median"] == 400_000
    assert data["summary"]["delta_vs_full_sent_ratio"] == pytest.approx(0.1)
    printed = capsys.readouterr().out
    assert "| rollout_v2 | 20.0 s (20.0-20.0, n=2) | 25.0 s (25.0-25.0, n=2) |" in printed
    assert "Deltas send 10.0% of the full-file bytes" in printed
    assert (
        "| OTA, every release of the demo, all devices | 90,000 B (90,000-90,000, n=2) | 450,000 B" in printed
    )
    assert all(isinstance(r["loopback_bytes"], int) and r["loopback_bytes"] >= 0 for r in data["runs"])
    assert "| whole demo on loopback (machine-wide counter) |" in printed
    assert bench.main(["--summarize", str(out)]) == 0
    again = capsys.readouterr().out
    assert "| rollout_v2 | 20.0 s (20.0-20.0, n=2) | 25.0 s (25.0-25.0, n=2) |" in again
    assert "`python bench/demo/run.py --reps 2`" in again


def test_a_failed_run_still_counts_what_its_timeline_recorded(fake_demo: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    assert (
        bench.main(["--reps", "1", "--work", str(tmp_path / "runs"), "--json", str(out), "--", "--fail"]) == 1
    )
    data = json.loads(out.read_text())
    assert [r["rc"] for r in data["runs"]] == [1, 1]
    delta = data["summary"]["arms"]["delta"]
    assert delta["ok_runs"] == 0
    assert delta["stages"]["rollout_v2"]["failed"] == 1
    assert delta["stages"]["fleet_up"]["wall_s"]["median"] == 10.0


def test_a_run_without_a_timeline_is_reported_not_recorded(tmp_path: Path) -> None:
    runs: list[dict[str, Any]] = [
        {"arm": "delta", "rc": 2, "timeline": {"error": "no timeline"}},
        {"arm": "full", "rc": 2, "timeline": {"error": "no timeline"}},
    ]
    summary = bench.summarize(runs)
    assert summary["delta_vs_full_sent_ratio"] is None
    text = bench.markdown(summary, "cmd", {"machine": "m"})
    assert "not recorded" in text


def test_bytes_fall_back_to_the_totals_without_per_device_rows() -> None:
    assert bench.ota_bytes({"ota": {"delta_bytes": 5, "full_bytes": 9}}) == {
        "sent": 5.0,
        "full": 9.0,
        "demo_total": None,
    }
    assert bench.ota_bytes({}) == {"sent": None, "full": None, "demo_total": None}
