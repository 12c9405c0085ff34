"""Browser-test harness: headless Debian Chromium driven by Playwright, a real `edgeloop-server`
process with admin, operator and viewer tokens, and screenshots saved as test artifacts.

Owns: the browser, the signed-in page (console errors collected), the server with its three
tokens, and `shot()` (test-artifacts/console/<test>-<name>.png, plus `-failed.png` on failure).
Does not own: what a page shows (the tests) or the server itself (tests/helpers/procs.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procs import ServerProc

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "console"


# ---------------------------------------------------------------- the browser


# Module scope, not session: a live sync Playwright holds an asyncio loop in the main thread, so every
# later test calling asyncio.run() would fail ("cannot be called from a running event loop").
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium package")
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait as long as actions do (the default is 5 s): on the 2-core CI box a filtered
    # 10,000-device page once took longer than 5 s to re-render while other suites ran.
    expect.set_options(timeout=15_000)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120]


def shot(page: Any, request: pytest.FixtureRequest, name: str) -> Path:
    """A full-page screenshot under test-artifacts/console/ named after the test and `name`."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{_slug(request.node.name)}-{_slug(name)}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@dataclass
class Console:
    """What the page reported about itself: script errors (console.error, uncaught exceptions)
    and server errors (any 5xx response). A refused request (4xx, e.g. a device with no drift
    sketch yet) is logged by Chromium as "Failed to load resource": kept apart, in `refused`."""

    errors: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> None:
        page.on("console", self._console)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("response", self._response)

    def _console(self, message: Any) -> None:
        if message.type != "error":
            return
        if message.text.startswith("Failed to load resource"):
            self.refused.append(f"{message.text} {message.location.get('url', '')}")
        else:
            self.errors.append(f"console.error: {message.text} ({message.location})")

    def _response(self, response: Any) -> None:
        if response.status >= 500:
            self.errors.append(f"HTTP {response.status}: {response.request.method} {response.url}")


@pytest.fixture
def console_log() -> Console:
    return Console()


def new_page(browser: Any, request: pytest.FixtureRequest, log: Console, **context: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1366, "height": 900}, **context)
    page = ctx.new_page()
    page.set_default_timeout(15_000)
    log.watch(page)
    try:
        yield page
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            try:
                shot(page, request, "failed")
            except Exception:  # a crashed page has nothing to show
                pass
        ctx.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, console_log: Console) -> Iterator[Any]:
    yield from new_page(browser, request, console_log)


# ---------------------------------------------------------------- the server


@dataclass
class Tokens:
    admin: str
    operator: str
    viewer: str


def make_tokens(server: ServerProc) -> Tokens:
    """An operator and a viewer token minted through the API by the admin `init` printed."""
    with server.api() as api:
        minted = {}
        for role in ("operator", "viewer"):
            resp = api.post("/operator-tokens", json={"name": f"browser-{role}", "role": role})
            assert resp.status_code == 201, resp.text
            minted[role] = str(resp.json()["token"])
    return Tokens(admin=server.admin_token, operator=minted["operator"], viewer=minted["viewer"])


def start_server(data_dir: Path, database_url: str = "", **env: str) -> ServerProc:
    server = ServerProc(data_dir=data_dir, database_url=database_url, env_extra=dict(env))
    server.data_dir.mkdir(parents=True)
    server.init()
    server.start()
    return server


def sign_in(page: Any, server: ServerProc, token: str, route: str = "#/fleet") -> None:
    """Open the console, sign in with `token` and wait for the banner naming the identity."""
    from playwright.sync_api import expect

    page.goto(f"{server.url}/console{route}")
    page.get_by_label("Operator token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text(re.compile(r"Signed in as .+ \((viewer|operator|admin)\)"))).to_be_visible()


def choose(field: Any, value: str) -> None:
    """Set a filter whether the page made it a text input or a select."""
    if field.evaluate("e => e.tagName") == "SELECT":
        field.select_option(value)
    else:
        field.fill(value)


def apply_filters(page: Any) -> None:
    """Filters apply on "Apply filters" where the page has that button, else on Enter."""
    button = page.get_by_role("button", name="Apply filters")
    if button.count():
        button.click()
    else:
        page.keyboard.press("Enter")
