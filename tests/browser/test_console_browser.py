"""The operator console in headless Chromium against a real server process and real agents
(issue 14, "Must show"): sign in with a token, devices appear live, open a device and label it,
create a rollout from the page, watch it progress and pause it; a viewer sees no operator button
and the server refuses a viewer's forged request anyway.

Fast tier: one server per module with one real agent that enrolls while the page is open.
Slow tier: a rollout of a real ONNX model to three real OTA agents, created and paused from the page.
Accessible names are the ones in the console contract (notes/console_contract.md).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Console, Tokens, make_tokens, new_page, shot, sign_in, start_server
from tests.helpers.procs import AgentProc, ServerProc, wait_until

pytestmark = pytest.mark.browser

OPERATOR_BUTTONS = (
    "Create bootstrap token",
    "Save labels",
    "Revoke device",
    "Create rollout",
    "Start rollout",
    "Pause",
    "Resume",
    "Abort",
    "Roll back",
    "Approve",
    "Start run",
    "Stop run",
)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|File \".*\.py\", line \d+")


@dataclass
class Fleet:
    server: ServerProc
    tokens: Tokens
    root: Path
    agents: dict[str, AgentProc] = field(default_factory=dict)

    def enroll(self, device_id: str, labels: dict[str, str] | None = None, start: bool = True) -> AgentProc:
        agent = AgentProc(device_id=device_id, data_dir=self.root / "agents" / device_id, server=self.server)
        agent.data_dir.mkdir(parents=True)
        result = agent.enroll(self.server.bootstrap_token(labels=labels or {"site": "lab"}))
        assert result.returncode == 0, result.stderr.decode()
        if start:
            agent.start()
        self.agents[device_id] = agent
        return agent

    def device(self, device_id: str) -> dict[str, Any]:
        with self.server.api() as api:
            resp = api.get(f"/devices/{device_id}")
            resp.raise_for_status()
            return dict(resp.json())

    def online(self, device_id: str) -> AgentProc:
        """The agent `device_id`, enrolled and reporting (enrolled now if no earlier test did)."""
        agent = self.agents.get(device_id) or self.enroll(device_id)
        wait_until(lambda: self.device(device_id)["online"], 30, what=f"{device_id} online")
        return agent

    def stop(self) -> None:
        for agent in self.agents.values():
            if agent.proc is not None and agent.proc.poll() is None:
                agent.stop()
        self.server.stop()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("console")
    server = start_server(root / "server")
    f = Fleet(server=server, tokens=make_tokens(server), root=root)
    try:
        yield f
    finally:
        f.stop()


def _no_operator_buttons(page: Any) -> None:
    for name in OPERATOR_BUTTONS:
        expect(page.get_by_role("button", name=name, exact=True)).to_have_count(0)


def _no_traceback(page: Any) -> None:
    assert not TRACEBACK.search(page.inner_text("body"))


# ---------------------------------------------------------------- fast tier


def test_sign_in_and_a_device_enrolled_afterwards_appears_live(
    fleet: Fleet, page: Any, console_log: Console, request: pytest.FixtureRequest
) -> None:
    sign_in(page, fleet.server, fleet.tokens.operator)
    expect(page.get_by_text("Signed in as browser-operator (operator)")).to_be_visible()
    expect(page.get_by_role("heading", name="Fleet", exact=True)).to_be_visible()
    for name in ("Fleet", "Releases", "Models", "Rollouts", "Federated", "Drift", "Audit"):
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    table = page.get_by_role("table", name="Devices")
    expect(table).to_be_visible()
    shot(page, request, "fleet-empty")

    fleet.enroll("dev-live", labels={"site": "lab", "rack": "1"})  # no reload from here on
    expect(table.get_by_role("link", name="dev-live", exact=True)).to_be_visible(timeout=30_000)
    expect(page.get_by_role("region", name="Fleet summary")).to_contain_text("1 online", timeout=30_000)
    shot(page, request, "fleet-live")
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # never reloaded
    assert console_log.errors == []


def test_open_a_device_and_label_it(
    fleet: Fleet, page: Any, console_log: Console, request: pytest.FixtureRequest
) -> None:
    fleet.online("dev-live")
    sign_in(page, fleet.server, fleet.tokens.operator)
    page.get_by_role("table", name="Devices").get_by_role("link", name="dev-live", exact=True).click()
    expect(page.get_by_role("heading", name="Device dev-live")).to_be_visible()
    assert page.url.endswith("#/device/dev-live")
    for chart in ("Latency", "Throughput", "Errors", "Outbox"):
        expect(page.get_by_role("img", name=chart)).to_be_visible()

    page.get_by_label("Labels", exact=True).fill("site=browser, tier=gold, rack-")
    page.get_by_role("button", name="Save labels").click()
    wait_until(
        lambda: fleet.device("dev-live")["labels"] == {"site": "browser", "tier": "gold"},
        10,
        what="labels saved through the page",
    )
    expect(page.get_by_text("tier=gold").first).to_be_visible()
    shot(page, request, "device-labelled")

    with fleet.server.api() as api:  # the change is audited with the operator's identity
        entries = api.get("/audit", params={"limit": 50}).json()
    text = json.dumps(entries)
    assert "browser-operator" in text and "dev-live" in text
    assert console_log.errors == []


def test_a_live_refresh_already_under_way_does_not_wipe_what_the_operator_is_typing(
    fleet: Fleet, page: Any, console_log: Console, request: pytest.FixtureRequest
) -> None:
    # The race the demo hit on CI: a device event starts a live re-render (no one typing yet), the
    # operator types labels while its requests are in flight, then the re-render lands and used to
    # replace the form with an empty one, so "Save labels" saved nothing.
    fleet.online("dev-live")
    sign_in(page, fleet.server, fleet.tokens.operator, route="#/device/dev-live")
    expect(page.get_by_role("heading", name="Device dev-live")).to_be_visible()
    held: list[Any] = []
    holding = [True]

    def hold(route: Any) -> None:  # the device view's first request, held while the operator types
        if holding[0]:
            held.append(route)
        else:
            route.continue_()

    page.route("**/api/v1/devices/dev-live", hold)
    with fleet.server.api() as api:  # a change from elsewhere: a "device" event for this page
        api.patch("/devices/dev-live/labels", json={"labels": {"elsewhere": "yes"}}).raise_for_status()
    deadline = time.monotonic() + 20
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    assert held, "no live re-render of the device page after its labels changed"
    box = page.get_by_label("Labels", exact=True)
    box.fill("typed=kept")  # typed while the live re-render waits for the server
    holding[0] = False
    with page.expect_response(lambda r: "/api/v1/drift/episodes" in r.url):
        for route in held:
            route.continue_()
    page.wait_for_timeout(500)  # the re-render's last await resolves here; it used to replace the form
    expect(box).to_have_value("typed=kept")
    page.get_by_role("button", name="Save labels").click()
    wait_until(lambda: fleet.device("dev-live")["labels"].get("typed") == "kept", 10, what="typed saved")
    expect(page.get_by_text("elsewhere=yes").first).to_be_visible()  # the page caught up once focus left
    shot(page, request, "typing-kept")
    assert console_log.errors == []


def test_a_bad_token_gets_the_servers_message_not_a_stack_trace(
    fleet: Fleet, page: Any, request: pytest.FixtureRequest
) -> None:
    page.goto(f"{fleet.server.url}/console#/fleet")
    page.get_by_label("Operator token").fill("op_not-a-real-token")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).not_to_be_empty()
    expect(page.get_by_text(re.compile("Signed in as"))).to_have_count(0)
    shot(page, request, "bad-token")
    _no_traceback(page)


def test_a_viewer_sees_no_operator_button_and_a_forged_request_is_refused(
    fleet: Fleet, page: Any, console_log: Console, request: pytest.FixtureRequest
) -> None:
    fleet.online("dev-live")
    sign_in(page, fleet.server, fleet.tokens.viewer)
    expect(page.get_by_text("Signed in as browser-viewer (viewer)")).to_be_visible()
    expect(page.get_by_role("table", name="Devices").get_by_role("link", name="dev-live")).to_be_visible()
    _no_operator_buttons(page)
    shot(page, request, "viewer-fleet")

    page.goto(f"{fleet.server.url}/console#/device/dev-live")
    expect(page.get_by_role("heading", name="Device dev-live")).to_be_visible()
    expect(page.get_by_role("img", name="Latency")).to_be_visible()
    _no_operator_buttons(page)
    shot(page, request, "viewer-device")
    for route, heading in (("#/releases", "Releases"), ("#/rollouts", "Rollouts"), ("#/models", "Models"),
                           ("#/federated", "Federated"), ("#/audit", "Audit")):  # fmt: skip
        page.goto(f"{fleet.server.url}/console{route}")
        expect(page.get_by_role("heading", name=re.compile(heading)).first).to_be_visible()
        _no_operator_buttons(page)
        shot(page, request, f"viewer-{heading.lower()}")

    # The same requests the operator buttons make, forged with the viewer's token from the page.
    base = f"{fleet.server.url}/api/v1"
    auth = {"Authorization": f"Bearer {fleet.tokens.viewer}", "Content-Type": "application/json"}
    forged = [
        page.request.patch(f"{base}/devices/dev-live/labels", headers=auth, data={"labels": {"x": "1"}}),
        page.request.post(f"{base}/bootstrap-tokens", headers=auth, data={"labels": {}}),
        page.request.post(f"{base}/rollouts", headers=auth, data={"releases": [1]}),
        page.request.post(f"{base}/devices/dev-live/revoke", headers=auth, data={}),
    ]
    assert [r.status for r in forged] == [403] * len(forged), [r.text() for r in forged]
    assert "x" not in fleet.device("dev-live")["labels"]
    assert fleet.device("dev-live")["status"] == "active"
    assert console_log.errors == []


def test_an_operator_creates_a_bootstrap_token_shown_once(
    fleet: Fleet, page: Any, request: pytest.FixtureRequest
) -> None:
    sign_in(page, fleet.server, fleet.tokens.operator)
    create = page.get_by_role("button", name="Create bootstrap token")
    expect(page.get_by_text("Enrol devices", exact=True)).to_be_visible()
    if not create.is_visible():  # the page keeps the form in a collapsed "Enrol devices" section
        page.get_by_text("Enrol devices", exact=True).click()
    create.click()
    shown = page.get_by_label("New bootstrap token")
    expect(shown).to_be_visible()
    token = shown.input_value() if shown.evaluate("e => 'value' in e") else shown.inner_text()
    assert token.strip().startswith("bt_") or len(token.strip()) >= 20, token
    shot(page, request, "bootstrap-token")
    # Device events re-render the fleet view live once nothing has focus (in CI the token was lost
    # to such a re-render): the token stays on screen through them until the operator leaves.
    page.get_by_role("heading", name="Fleet", exact=True).click()
    fleet.enroll("dev-enrol-panel")
    table = page.get_by_role("table", name="Devices")
    expect(table.get_by_role("link", name="dev-enrol-panel", exact=True)).to_be_visible(timeout=30_000)
    expect(shown).to_be_visible()
    expect(shown).to_have_value(token)
    page.reload()  # shown once: never again after the page is left (the session itself survives)
    expect(page.get_by_text(re.compile(r"Signed in as .+ \(operator\)"))).to_be_visible()
    expect(page.get_by_text(token.strip())).to_have_count(0)
    values = page.locator("input, textarea").evaluate_all("els => els.map(e => e.value)")
    assert token.strip() not in values, values


# ---------------------------------------------------------------- slow tier: a rollout from the page


@pytest.mark.slow
def test_a_rollout_created_from_the_page_progresses_and_is_paused(
    tmp_path: Path, browser: Any, request: pytest.FixtureRequest
) -> None:
    from tests.helpers import simfleet as sf
    from tests.integration.test_ota_support import models

    m = models()
    server = start_server(tmp_path / "server")
    f = Fleet(server=server, tokens=make_tokens(server), root=tmp_path)
    log = Console()
    pages = new_page(browser, request, log)
    page = next(pages)
    try:
        ids = ["ota-a", "ota-b", "ota-c"]
        for device_id in ids:
            agent = f.enroll(device_id, labels={"site": "lab", "ring": "canary"}, start=False)
            agent.start_ota()
        wait_until(lambda: all(f.device(d)["online"] for d in ids), 60, what="3 OTA agents online")
        with server.api() as api:
            seq = sf.publish(api, m.v1, "1", m.golden, threshold=0.5)

        sign_in(page, server, f.tokens.operator, route="#/releases")
        releases = page.get_by_role("table", name="Releases")
        expect(releases).to_contain_text("digits")
        releases.get_by_role("button", name="Create rollout").first.click()
        page.get_by_label("Batches (devices per batch)").fill("1, 2")
        page.get_by_label("Label selector").fill("ring=canary")
        shot(page, request, "rollout-form")
        page.get_by_role("button", name="Start rollout").click()

        heading = page.get_by_role("heading", name=re.compile(r"^Rollout \S+"))
        expect(heading).to_be_visible()
        rollout_id = heading.inner_text().split(" ", 1)[1].strip()
        assert page.url.endswith(f"#/rollout/{rollout_id}")
        expect(page.get_by_text(re.compile(r"State: running"))).to_be_visible(timeout=30_000)
        expect(page.get_by_text(re.compile(r"^Batch 1 of 2$")).first).to_be_visible(timeout=30_000)
        # progress, pushed to the open page: the canary installs the model and commits it
        expect(page.get_by_text(re.compile(r"committed")).first).to_be_visible(timeout=90_000)
        shot(page, request, "rollout-progress")
        with server.api() as api:
            detail = api.get(f"/rollouts/{rollout_id}").json()
        assert [r["seq"] for r in detail["releases"]] == [seq]
        assert detail["selector"]["labels"] == {"ring": "canary"}
        assert detail["devices"].get("committed", 0) >= 1, detail["devices"]

        page.get_by_role("button", name="Pause", exact=True).click()
        expect(page.get_by_text(re.compile(r"State: paused"))).to_be_visible(timeout=15_000)
        expect(page.get_by_role("button", name="Resume", exact=True)).to_be_enabled()
        pause = page.get_by_role("button", name="Pause", exact=True)
        assert pause.count() == 0 or pause.is_disabled()  # only the valid actions are enabled
        shot(page, request, "rollout-paused")
        with server.api() as api:
            assert api.get(f"/rollouts/{rollout_id}").json()["state"] == "paused"
            audit = json.dumps(api.get("/audit", params={"limit": 100}).json())
        assert "browser-operator" in audit and rollout_id in audit
        _no_traceback(page)
        assert log.errors == []
    finally:
        pages.close()
        f.stop()
