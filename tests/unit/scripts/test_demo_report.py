"""The demo's report (scripts/demo_report.py) from a synthetic timeline shaped like contract A.

No processes: render() is pure file output. The numbers the report prints are checked through
report_numbers(), the helper the demo's e2e test uses to compare the report with the run.
"""

from __future__ import annotations

import base64
import copy
import html
import importlib.util
import io
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_report", ROOT / "scripts" / "demo_report.py")
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("demo_report", mod)
    spec.loader.exec_module(mod)
    return mod


dr = _load()
HOSTILE = '<script>alert("x")</script>&$\\frac{1}{0}$|'


def timeline() -> dict[str, Any]:
    """A run as scripts/demo.py records it: v1 canary->all, drift + stuck sensor, FL, v2 by delta, bad v3."""
    return {
        "schema": 1,
        "started_at": "2026-12-07T02:30:00Z",
        "wall_s": 412.3,
        "quick": False,
        "console_url": "http://127.0.0.1:8765/console",
        "devices": [
            {"id": "pi-kitchen", "profile": "raspberry-pi-4", "transport": "grpc", "cohort": "drifted"},
            {"id": "jetson-dock", "profile": "jetson-orin-nano", "transport": "grpc", "cohort": "drifted"},
            {"id": "coral-gate", "profile": "coral-dev-board", "transport": "grpc", "cohort": "stuck"},
            {"id": "pi-garden", "profile": "raspberry-pi-4", "transport": "mqtt", "cohort": "control"},
        ],
        "stages": [
            {
                "key": "fleet_up",
                "title": "server + 4 agents enrolled",
                "t_start_s": 0.0,
                "wall_s": 11.8,
                "ok": True,
                "facts": {"devices": 4, "mqtt": "pi-garden"},
            },
            {
                "key": "rollout_v1",
                "title": "phased rollout of v1 (canary -> all)",
                "t_start_s": 12.0,
                "wall_s": 40.2,
                "ok": True,
                "facts": {"canary_devices": 1},
            },
            {
                "key": "drift",
                "title": "drift injected and detected",
                "t_start_s": 52.2,
                "wall_s": 61.0,
                "ok": True,
                "facts": {"episodes": 3},
            },
            {
                "key": "federated",
                "title": "federated run on the drifted cohort",
                "t_start_s": 113.2,
                "wall_s": 150.4,
                "ok": True,
                "facts": {"rounds": 3, "epsilon": 1.5},
            },
            {
                "key": "rollout_v2",
                "title": "v2 by delta",
                "t_start_s": 263.6,
                "wall_s": 70.1,
                "ok": True,
                "facts": {"delta_bytes": 40960},
            },
            {
                "key": "bad_release",
                "title": "bad v3 halted at canary",
                "t_start_s": 333.7,
                "wall_s": 78.6,
                "ok": True,
                "facts": {"halted_at": "canary"},
            },
        ],
        "accuracy": [
            {
                "point": "v1, before drift",
                "model": "digits-head@1",
                "inputs": "normal",
                "accuracy": 0.9134,
                "t_s": 60.0,
            },
            {
                "point": "v1, before drift",
                "model": "digits-head@1",
                "inputs": "drifted",
                "accuracy": 0.874,
                "t_s": 60.0,
            },
            {
                "point": "v1, after drift",
                "model": "digits-head@1",
                "inputs": "drifted",
                "accuracy": 0.412,
                "t_s": 110.0,
            },
            {
                "point": "v2, after retraining",
                "model": "digits-head@2",
                "inputs": "drifted",
                "accuracy": 0.8326,
                "t_s": 330.0,
            },
            {
                "point": "v2, after retraining",
                "model": "digits-head@2",
                "inputs": "normal",
                "accuracy": 0.9051,
                "t_s": 330.0,
            },
        ],
        "drift": {
            "episodes": [
                {
                    "device_id": "pi-kitchen",
                    "t_s": 80.0,
                    "kind": "covariate",
                    "severity": 0.8,
                    "features": ["mean"],
                },
                {
                    "device_id": "jetson-dock",
                    "t_s": 84.5,
                    "kind": "covariate",
                    "severity": 0.7,
                    "features": ["mean"],
                },
                {
                    "device_id": "coral-gate",
                    "t_s": 90.0,
                    "kind": "stuck",
                    "severity": 1.0,
                    "features": ["std"],
                },
            ],
            "verdicts": [
                {
                    "cohort": "learn=digits",
                    "verdict": "population_shift",
                    "devices": ["pi-kitchen", "jetson-dock"],
                    "anomalies": [{"device_id": "coral-gate", "signature": "stuck"}],
                },
            ],
            "scores": [
                {"device_id": "pi-kitchen", "t_s": 70.0, "score": 0.05},
                {"device_id": "pi-kitchen", "t_s": 81.0, "score": 0.42},
                {"device_id": "coral-gate", "t_s": 70.0, "score": 0.02},
                {"device_id": "coral-gate", "t_s": 90.0, "score": 0.97},
            ],
        },
        "rollouts": [
            {
                "id": "r-1",
                "release": "digits-head@1",
                "outcome": "completed",
                "phases": [
                    {"name": "canary", "devices": ["pi-kitchen"], "t_start_s": 13.0, "t_end_s": 30.0},
                    {
                        "name": "all",
                        "devices": ["jetson-dock", "coral-gate", "pi-garden"],
                        "t_start_s": 30.0,
                        "t_end_s": 51.0,
                    },
                ],
                "gates": [
                    {
                        "phase": "canary",
                        "metric": "install_failure_rate",
                        "value_canary": 0.0,
                        "value_control": 0.0,
                        "threshold": 0.05,
                        "verdict": "pass",
                    }
                ],
            },
            {
                "id": "r-3",
                "release": "digits-head@3",
                "outcome": "rolled_back",
                "phases": [
                    {"name": "canary", "devices": ["pi-kitchen"], "t_start_s": 335.0, "t_end_s": 395.0}
                ],
                "gates": [
                    {
                        "phase": "canary",
                        "metric": "prediction_confidence",
                        "value_canary": 0.4123,
                        "value_control": 0.9071,
                        "threshold": 0.05,
                        "verdict": "fail",
                    },
                    {
                        "phase": "canary",
                        "metric": "install_failure_rate",
                        "value_canary": 0.0,
                        "value_control": 0.0,
                        "threshold": 0.05,
                        "verdict": "pass",
                    },
                ],
            },
        ],
        "ota": {
            "delta_bytes": 123456,
            "full_bytes": 1843200,
            "per_device": [
                {
                    "device_id": "pi-kitchen",
                    "release": "digits-head@2",
                    "bytes": 30864,
                    "full_bytes": 460800,
                    "delta": True,
                },
                {
                    "device_id": "jetson-dock",
                    "release": "digits-head@2",
                    "bytes": 30864,
                    "full_bytes": 460800,
                    "delta": True,
                },
                {
                    "device_id": "coral-gate",
                    "release": "digits-head@2",
                    "bytes": 460800,
                    "full_bytes": 460800,
                    "delta": False,
                },
            ],
        },
        "federated": {
            "run_id": "fl-7",
            "triggered_by": "drift",
            "secure_aggregation": True,
            "epsilon": 1.5,
            "delta": 1e-5,
            "devices": ["pi-kitchen", "jetson-dock"],
            "excluded": ["coral-gate"],
            "rounds": [
                {"round": 1, "participants": 2, "loss": 0.7, "accuracy": 0.8},
                {"round": 2, "participants": 2, "loss": 0.52, "accuracy": 0.83},
                {"round": 3, "participants": 2, "loss": 0.41, "accuracy": 0.86},
            ],
        },
        "bad_release": {
            "release": "digits-head@3",
            "halted_at": "canary",
            "rolled_back_devices": ["pi-kitchen"],
            "all_back_on": "digits-head@2",
        },
    }


class _Checker(HTMLParser):
    VOID: ClassVar[set[str]] = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def _parse(page: str) -> _Checker:
    c = _Checker()
    c.feed(page)
    c.close()
    return c


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The synthetic run rendered once for the tests that only read it (plots take a while)."""
    out = tmp_path_factory.mktemp("report")
    page, md = _render(out, timeline())
    return out, page, md


def _render(tmp_path: Path, tl: dict[str, Any]) -> tuple[str, str]:
    path = dr.render(tl, tmp_path, strict=True)
    assert path == tmp_path / "report.html"
    return path.read_text(encoding="utf-8"), (tmp_path / "report.md").read_text(encoding="utf-8")


def test_report_is_balanced_html_with_no_network_resources_or_scripts(full: tuple[Path, str, str]) -> None:
    _, page, _ = full
    parsed = _parse(page)
    assert parsed.errors == []
    assert parsed.stack == []
    assert page.startswith("<!doctype html>")
    assert not [t for t, _ in parsed.tags if t in {"script", "link", "iframe"}]
    srcs = [a.get("src") or "" for t, a in parsed.tags if t == "img"]
    assert srcs
    assert all(s.startswith("data:image/png;base64,") for s in srcs)


def test_every_plot_is_embedded_and_written_as_a_decodable_png(full: tuple[Path, str, str]) -> None:
    out, page, md = full
    srcs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    files = sorted((out / "report").glob("*.png"))
    # stages, accuracy, drift, one per rollout (2), bytes, federated
    assert len(srcs) == len(files) == 7
    assert {f.name for f in files} == {
        "stages.png",
        "accuracy.png",
        "drift.png",
        "rollout-1.png",
        "rollout-2.png",
        "bytes.png",
        "federated.png",
    }
    embedded = sorted(base64.b64decode(s) for s in srcs)
    assert embedded == sorted(f.read_bytes() for f in files)
    for data in embedded:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()
            assert im.format == "PNG"
            assert im.size[0] > 300
    for f in files:
        assert f"](report/{f.name})" in md


def test_key_numbers_are_printed_as_documented(full: tuple[Path, str, str]) -> None:
    _, page, md = full
    n = dr.report_numbers(timeline())
    expected = {
        "wall": "412.3 s",
        "stage/rollout_v1/wall": "40.2 s",
        "stage/bad_release/status": "ok",
        "accuracy/v1, before drift/drifted": "87.4%",
        "accuracy/v1, after drift/drifted": "41.2%",
        "accuracy/v2, after retraining/drifted": "83.3%",
        "accuracy/v1, before drift/normal": "91.3%",
        "ota/delta_bytes": "123,456 B",
        "ota/full_bytes": "1,843,200 B",
        "ota/ratio": "6.7%",
        "ota/saved": "1,719,744 B",
        "ota/pi-kitchen/digits-head@2/bytes": "30,864 B",
        "federated/epsilon": "1.5",
        "federated/delta": "1e-05",
        "federated/secure_aggregation": "on",
        "federated/triggered_by": "drift",
        "federated/rounds": "3",
        "gate/r-3/canary/prediction_confidence/canary": "0.4123",
        "gate/r-3/canary/prediction_confidence/control": "0.9071",
        "gate/r-3/canary/prediction_confidence/threshold": "0.05",
        "gate/r-3/canary/prediction_confidence/verdict": "fail",
        "rollout/r-3/outcome": "rolled_back",
        "bad_release/halted_at": "canary",
        "bad_release/all_back_on": "digits-head@2",
    }
    assert {k: n.get(k) for k in expected} == expected
    for key, value in n.items():
        assert html.escape(value) in page, key
        assert value in md, key


def test_the_bad_release_halt_and_rollback_are_marked(full: tuple[Path, str, str]) -> None:
    _, page, _ = full
    assert '<td class="bad">rolled_back</td>' in page
    assert '<td class="bad">fail</td>' in page
    assert '<td class="bad">canary</td>' in page  # halted at
    assert '<td class="good">digits-head@2</td>' in page  # every device back on the good model
    assert '<td class="good">completed</td>' in page
    assert (
        "<td>stopped by</td><td>prediction_confidence at canary: canary 0.4123 vs control 0.9071 "
        "(threshold 0.05)</td>" in page
    )


def test_hostile_strings_from_the_run_are_escaped_everywhere(tmp_path: Path) -> None:
    tl = timeline()
    tl["devices"][0]["id"] = HOSTILE
    tl["drift"]["episodes"][0]["device_id"] = HOSTILE
    tl["drift"]["scores"][0]["device_id"] = HOSTILE
    tl["ota"]["per_device"][0]["device_id"] = HOSTILE
    tl["rollouts"][1]["gates"][0]["metric"] = HOSTILE
    tl["stages"][0]["facts"]["note"] = HOSTILE
    tl["console_url"] = 'javascript:alert(1)//"><script>'
    tl["accuracy"][0]["point"] = HOSTILE
    tl["rollouts"][0]["release"] = HOSTILE
    tl["drift"]["verdicts"][0]["cohort"] = HOSTILE
    tl["federated"]["run_id"] = HOSTILE
    tl[HOSTILE] = {HOSTILE: HOSTILE}
    page, md = _render(tmp_path, tl)  # strict: the plots' labels must not trip matplotlib's mathtext either
    assert "<script" not in page
    assert 'href="javascript' not in page
    assert html.escape(HOSTILE) in page
    assert _parse(page).errors == []
    outside_code = re.sub(r"```.*?```", "", md, flags=re.DOTALL)  # fenced JSON is inert text
    assert "<script>" not in outside_code
    assert "&lt;script>" in outside_code


def test_missing_optional_sections_say_not_recorded(tmp_path: Path) -> None:
    tl = {k: v for k, v in timeline().items() if k in {"schema", "started_at", "wall_s", "devices", "stages"}}
    tl["stages"][0].pop("facts")
    tl["stages"][1]["wall_s"] = None
    page, md = _render(tmp_path, tl)
    for anchor in ("accuracy", "drift", "rollouts", "bad-release", "bytes", "federated"):
        section = page.split(f'id="{anchor}"', 1)[1].split("<h2", 1)[0]
        assert "not recorded" in section, anchor
    assert "not recorded" in md
    assert [f.name for f in (tmp_path / "report").glob("*.png")] == ["stages.png"]


def test_optional_keys_inside_sections_may_be_missing(tmp_path: Path) -> None:
    tl = timeline()
    del tl["drift"]["scores"]
    del tl["federated"]["epsilon"]
    del tl["rollouts"][0]["phases"][1]["t_end_s"]
    tl["rollouts"][1]["gates"][0]["value_control"] = None
    tl["ota"]["per_device"][1].pop("full_bytes")
    page, _ = _render(tmp_path, tl)
    assert "drift scores series: not recorded" in page
    assert dr.report_numbers(tl)["federated/epsilon"] == "not recorded"
    assert len(list((tmp_path / "report").glob("*.png"))) == 7


def test_a_failed_stage_is_shown_in_red_with_its_detail(tmp_path: Path) -> None:
    tl = timeline()
    tl["stages"][3].update(ok=False, detail="no federated run opened within 120 s")
    tl["stages"] = tl["stages"][:4]
    page, md = _render(tmp_path, tl)
    assert '<td class="bad">FAILED</td>' in page
    assert "detail: no federated run opened within 120 s" in page
    assert "1 of 4 stages FAILED: federated" in page
    assert "FAILED" in md


def test_unknown_keys_and_facts_render_generically(tmp_path: Path) -> None:
    tl = timeline()
    tl["mqtt_broker"] = {"port": 18830, "note": HOSTILE}
    tl["stages"][0]["facts"]["nested"] = {"a": [1, 2]}
    page, _ = _render(tmp_path, tl)
    assert 'id="other"' in page
    assert "18830" in page
    assert "{&quot;a&quot;: [1, 2]}" in page


def test_a_malformed_section_does_not_fail_the_demo_unless_strict(tmp_path: Path) -> None:
    tl = copy.deepcopy(timeline())
    tl["rollouts"][0]["phases"][0]["t_start_s"] = 50.0  # ends before it starts: still drawable
    tl["accuracy"] = [{"point": "x", "inputs": "normal", "accuracy": "high"}]  # not a number
    tl["ota"] = {"delta_bytes": "lots", "per_device": "?"}
    path = dr.render(tl, tmp_path)
    assert path.exists()
    page = path.read_text(encoding="utf-8")
    assert "not recorded" in page


def test_cli_rerenders_from_a_saved_timeline(tmp_path: Path) -> None:
    saved = tmp_path / "timeline.json"
    saved.write_text(__import__("json").dumps(timeline()), encoding="utf-8")
    out = tmp_path / "out"
    assert dr.main([str(saved), "--out", str(out)]) == 0
    assert (out / "report.html").exists()
    assert (out / "report.md").exists()
    assert len(list((out / "report").glob("*.png"))) == 7


@pytest.mark.parametrize("value", [float("nan"), float("inf"), None, "n/a"])
def test_non_numbers_format_as_not_recorded(value: Any) -> None:
    assert dr.fmt_pct(value) == "not recorded"
    assert dr.fmt_bytes(value) == "not recorded"


def timeline_as_demo_records() -> dict[str, Any]:
    """The shapes scripts/demo_loop.py records beyond contract A: phases with the server's
    assigned_at/settled_at (naive UTC), a batch never started, gate p-values and samples, per-device
    rollout statuses, ε null (differential privacy off), rounds without accuracy, extra keys."""
    tl = timeline()
    tl["started_at"] = "2026-12-07T02:30:00Z"
    bad = tl["rollouts"][1]
    bad["reason"] = "gate confidence_mean failed at look 4"
    bad["phases"] = [
        {"name": "canary", "devices": ["pi-kitchen"], "assigned_at": "2026-12-07T02:35:35.250000",
         "settled_at": "2026-12-07T02:36:35"},
        {"name": "batch 1", "devices": ["jetson-dock"], "assigned_at": None, "settled_at": None},
    ]  # fmt: skip
    for g in bad["gates"]:
        g.update(p_value=0.0012, looks=4, samples_canary=640, samples_control=1280)
    bad["devices"] = {"pi-kitchen": "rolled_back", "jetson-dock": "pending"}
    tl["federated"].update(epsilon=None, delta=None, dp="off (see report)", reason="drift on learn=digits")
    tl["federated"]["rounds"] = [
        {"round": r, "participants": 2, "sampled": 2, "loss": 0.7 - 0.1 * r, "survivors": 2}
        for r in (1, 2, 3)
    ]
    tl["devices"][0]["site"] = "north"
    tl["accuracy"][0].update(devices=3, samples=360)
    tl["ota"].update(use_delta=True, demo_total_bytes=211_234)
    tl["bad_release"].update(reason="halted", exposed_devices=1, fleet_devices=5)
    return tl


def test_the_demos_own_shapes_render_with_their_extra_fields(tmp_path: Path) -> None:
    tl = timeline_as_demo_records()
    page, md = _render(tmp_path, tl)
    n = dr.report_numbers(tl)
    assert n["federated/epsilon"] == "none spent (differential privacy off)"
    assert n["federated/delta"] == "not recorded"
    assert n["ota/demo_total_bytes"] == "211,234 B"
    assert "<td>every release of the run, all devices</td><td>211,234 B</td>" in page
    rollout = page.split("digits-head@3 (rollout r-3)", 1)[1]
    # canary 335.2 s -> 395.0 s after the start, from the server's timestamps
    assert "<td>335.2 s</td><td>395.0 s</td>" in rollout
    assert "<td>batch 1</td><td>jetson-dock</td><td>not recorded</td><td>not recorded</td>" in rollout
    assert "<th>p value</th>" in rollout
    assert "<td>0.0012</td><td>4</td><td>640</td><td>1280</td>" in rollout
    assert '<td class="bad">rolled_back</td><td>1: pi-kitchen</td>' in rollout
    assert "<td>pending</td><td>1: jetson-dock</td>" in rollout
    assert "gate confidence_mean failed at look 4" in rollout
    for text in (
        "<th>site</th>",
        "<td>north</td>",
        "<th>samples</th>",
        "<th>survivors</th>",
        "off (see report)",
        "exposed devices",
        "transfer mode",
    ):
        assert text in page, text
    assert len(list((tmp_path / "report").glob("*.png"))) == 7
    assert "| survivors |" in md


def test_a_stage_that_raised_shows_its_error_in_red(tmp_path: Path) -> None:
    tl = timeline()
    tl["stages"][2].update(ok=False, facts={"error": "demo: pi-south was called spike, not a stuck sensor"})
    page, _ = _render(tmp_path, tl)
    assert '<td class="bad">error=demo: pi-south was called spike, not a stuck sensor</td>' in page


def test_the_demos_initial_empty_sections_are_not_recorded(tmp_path: Path) -> None:
    tl = {k: v for k, v in timeline().items() if k in {"schema", "started_at", "wall_s", "devices", "stages"}}
    tl.update(
        accuracy=[],
        drift={"episodes": [], "verdicts": [], "scores": []},
        rollouts=[],
        ota={"delta_bytes": 0, "full_bytes": 0, "per_device": []},
        federated={},
        bad_release={},
    )
    page, _ = _render(tmp_path, tl)
    assert "ota/delta_bytes" not in dr.report_numbers(tl)
    bytes_section = page.split('id="bytes"', 1)[1].split("<h2", 1)[0]
    assert "not recorded" in bytes_section
    assert "0 B" not in bytes_section


def test_a_timeline_that_is_not_an_object_still_leaves_a_report(tmp_path: Path) -> None:
    path = dr.render(["not", "a", "timeline"], tmp_path)  # type: ignore[arg-type]
    page = path.read_text(encoding="utf-8")
    assert "unreadable_timeline" in page
    assert "not recorded" in page
    with pytest.raises(TypeError):
        dr.render([], tmp_path, strict=True)  # type: ignore[arg-type]


def test_accuracy_points_of_one_moment_share_a_slot_on_the_curve() -> None:
    acc = [
        {"point": "v1, before drift", "inputs": "normal", "accuracy": 0.95, "t_s": 156.79},
        {"point": "v1, before drift (turned digits)", "inputs": "drifted", "accuracy": 0.15, "t_s": 156.81},
        {
            "point": "v1, after drift",
            "inputs": "drifted",
            "accuracy": 0.15,
            "t_s": 160.56,
        },  # close, same inputs
        {"point": "v2, after retraining", "inputs": "drifted", "accuracy": 0.8},  # no time: by name only
        {"point": "v2, after retraining", "inputs": "normal", "accuracy": 0.9},
    ]
    slots = dr._accuracy_slots(acc)
    assert [[m["accuracy"] for m in members] for _, members in slots] == [[0.95, 0.15], [0.15], [0.8, 0.9]]


def test_a_big_fleet_is_counted_not_listed(tmp_path: Path) -> None:
    tl = timeline_as_demo_records()
    many = [f"sim-{i:04d}" for i in range(500)]
    tl["rollouts"][0]["phases"][1]["devices"] = many
    tl["rollouts"][0]["devices"] = dict.fromkeys(many, "committed")
    page, _ = _render(tmp_path, tl)
    assert "sim-0009, … (500 in all)" in page
    assert '<td class="good">committed</td><td>500: sim-0000' in page
    assert "sim-0499" not in page


def test_without_matplotlib_the_report_keeps_its_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dr, "plt", None)
    page, md = _render(tmp_path, timeline())
    assert "<img" not in page
    assert list((tmp_path / "report").glob("*.png")) == []
    assert "plots: not drawn (matplotlib is not installed" in page
    for value in dr.report_numbers(timeline()).values():
        assert html.escape(value) in page
        assert value in md


def test_verify_finds_a_report_that_does_not_match_its_run(tmp_path: Path) -> None:
    tl = timeline()
    assert dr.verify(tl, tmp_path) == [f"no report in {tmp_path}"]
    dr.render(tl, tmp_path, strict=True)
    assert dr.verify(tl, tmp_path) == []
    other = timeline()
    other["ota"]["delta_bytes"] = 99_999
    other["federated"]["epsilon"] = 3.25
    problems = dr.verify(other, tmp_path)
    assert "ota/delta_bytes: '99,999 B' not in report.html" in problems
    assert "federated/epsilon: '3.25' not in report.md" in problems
    (tmp_path / "report" / "drift.png").unlink()
    assert "7 plots embedded, 6 PNG files in" in dr.verify(tl, tmp_path)[0]


def test_the_glance_says_how_many_updates_went_by_delta_and_skips_an_empty_rounds_plot(
    tmp_path: Path,
) -> None:
    tl = timeline()
    for r in tl["federated"]["rounds"]:
        r.update(loss=None, accuracy=None)
    page, _ = _render(tmp_path, tl)
    assert "123,456 B fetched (2 of 3 updates by delta) vs 1,843,200 B as full files (6.7% of full)" in page
    assert not (tmp_path / "report" / "federated.png").exists()
