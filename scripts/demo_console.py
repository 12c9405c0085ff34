"""The demo's operator-console step: what an operator sees and scrapes once the loop has run.

Prints the fleet summary through the CLI, the replicas and who holds each singleton lease
(`edgeloop replicas`: one replica here, on SQLite; the same view lists every replica on
PostgreSQL), `/readyz`'s checks and a few `/metrics` series, then (when
Debian's chromium is installed: `make browser`) signs in to the console in headless Chromium, acts
from the page (labels a device) and saves screenshots of the fleet, a device and the rollouts pages
in `.demo/`. Owns nothing the rest of the demo needs.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

CHROMIUM = Path("/usr/bin/chromium")
WANTED = ("edgeloop_devices_online", "edgeloop_rollouts", "edgeloop_telemetry_records_total")
SINGLETONS = ("tuf-signer", "registry-compile", "federated-runner", "drift-trigger", "audit-head-signer")


def show(
    *,
    url: str,
    token: str,
    device_id: str,
    out: Path,
    cli: Callable[..., subprocess.CompletedProcess[str]],
    console: Console,
) -> None:
    summary = cli("fleet", "summary")
    console.print(summary.stdout.rstrip())
    view = json.loads(cli("--json", "replicas").stdout)
    held = {lease["name"]: lease["holder"] for lease in view["leases"] if lease["held"]}
    missing = [name for name in SINGLETONS if held.get(name) != view["this_replica"]]
    if missing:
        raise SystemExit(f"demo: singleton leases not held by the server: {missing} ({view})")
    alive = [r["id"] for r in view["replicas"] if r["alive"]]
    console.print(
        f"  replicas: {len(alive)} alive ({view['this_replica']}), holding every singleton lease: "
        + ", ".join(SINGLETONS)
        + " (with PostgreSQL, more replicas behind a TCP balancer take them over: docs/operator-guide.md)"
    )
    ready = httpx.get(f"{url}/readyz", timeout=10)
    checks = ready.json().get("checks", {})
    console.print(
        f"  /readyz: HTTP {ready.status_code} · "
        + ", ".join(f"{name} {'ok' if c.get('ok') else 'FAIL'}" for name, c in sorted(checks.items()))
    )
    if ready.status_code != 200:
        raise SystemExit(f"demo: the server is not ready: {ready.text}")
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    lines = [ln for ln in metrics.splitlines() if ln.startswith(WANTED) and not ln.endswith(" 0.0")]
    console.print("  /metrics (non-zero):")
    for line in lines[:12]:
        console.print(f"    {line}")
    if not CHROMIUM.exists():
        console.print("  [yellow]no /usr/bin/chromium: `make browser` installs it for console screenshots[/]")
        return
    for path in _screenshots(url=url, token=token, device_id=device_id, out=out):
        console.print(f"  screenshot {path}")


def _screenshots(*, url: str, token: str, device_id: str, out: Path) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    shots: list[Path] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            page: Any = browser.new_page(viewport={"width": 1366, "height": 900})
            page.goto(f"{url}/console#/fleet")
            page.get_by_label("Operator token").fill(token)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text(re.compile(r"Signed in as "))).to_be_visible(timeout=15_000)
            expect(page.get_by_role("table", name="Devices")).to_contain_text(device_id, timeout=15_000)
            shots.append(_shot(page, out / "console-fleet.png"))
            page.goto(f"{url}/console#/device/{device_id}")
            expect(page.get_by_role("heading", name=f"Device {device_id}")).to_be_visible(timeout=15_000)
            page.get_by_label("Labels", exact=True).fill("console=demo")  # act from the page
            page.get_by_role("button", name="Save labels").click()
            expect(page.get_by_text("console=demo").first).to_be_visible(timeout=15_000)
            shots.append(_shot(page, out / "console-device.png"))
            page.goto(f"{url}/console#/rollouts")
            expect(page.get_by_role("heading", name="Rollouts")).to_be_visible(timeout=15_000)
            shots.append(_shot(page, out / "console-rollouts.png"))
        finally:
            browser.close()
    return shots


def _shot(page: Any, path: Path) -> Path:
    page.wait_for_timeout(500)  # let the charts draw
    page.screenshot(path=str(path), full_page=True)
    return path
