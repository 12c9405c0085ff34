"""Operator console benchmark (issue 14, "Measure"): with 10,000 devices inserted directly into the
database, the time to first meaningful render of the fleet page and of a device page in headless
Chromium (/usr/bin/chromium through Playwright) on loopback, and the /metrics scrape time.

    .venv/bin/python -m bench.console.run [--devices 10000] [--reps 5] [--database sqlite|postgres]

First meaningful render = navigation start -> the view shows its data, measured in the page with
performance.now() (0 = navigation start) by a predicate polled every animation frame:
  - fleet: the table captioned "Devices" has rows (for the baseline page: #fleet-table has rows);
  - device: heading "Device <id>" and the "Latency" chart drawn (a canvas or child inside it).
Every repetition is a full page load (about:blank first); the order of the runs inside a
repetition rotates (interleaved). Servers: the console under test with N devices and with 100
devices, and the baseline: the read-only console at BASELINE_COMMIT (before issue 14), its code
extracted with `git archive` and run on its own database seeded the same way (it has no device
page and no /metrics: those baselines are the issue's goals). Writes bench/console/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.helpers.procs import ServerProc, wait_until

BASELINE_COMMIT = "13d38da"  # the last commit before issue 14's console work
CHROMIUM = "/usr/bin/chromium"
GOALS_MS = {"fleet_page": 1000.0, "device_page": 1000.0, "metrics_scrape": 100.0}
DEVICE = "dev-00000"

FLEET_READY = """() => {
  const t = [...document.querySelectorAll('table')].find(
    (x) => x.caption && x.caption.textContent.trim() === 'Devices');
  return t && t.querySelectorAll('tbody tr a').length > 0 ? performance.now() : false;
}"""
BASELINE_FLEET_READY = """() =>
  document.querySelectorAll('#fleet-table tbody tr').length > 0 ? performance.now() : false"""
DEVICE_READY = """(id) => {
  const h = [...document.querySelectorAll('h1,h2,h3')].some((x) => x.textContent.trim() === 'Device ' + id);
  const c = document.querySelector('[role=img][aria-label=Latency]');
  return h && c && (c.querySelector('canvas') || c.childElementCount > 0) ? performance.now() : false;
}"""


# ---------------------------------------------------------------- servers


def _code_tree(commit: str, into: Path) -> Path:
    """The fleet_server package as it was at `commit` (git archive | tar), for the baseline."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", commit, "fleet_server"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _python_with(tree: Path | None, code: str) -> list[str]:
    """`python -c` with `tree` (a fleet_server of another commit) ahead of the checkout."""
    paths = [str(tree)] if tree else []
    paths.append(str(REPO))
    return [sys.executable, "-c", f"import sys; sys.path[:0] = {paths!r}; {code}"]


class BaselineServer(ServerProc):
    """`edgeloop-server` run from the code of another commit."""

    tree: Path | None = None

    def _cmd(self, *args: str) -> list[str]:
        cli = "from fleet_server.cli import main; sys.argv[0] = 'edgeloop-server'; sys.exit(main())"
        return [*_python_with(self.tree, cli), *args]

    def init(self) -> str:
        out = subprocess.run(self._cmd("init", "--json"), env=self.env(), check=True, capture_output=True)
        self.admin_token = json.loads(out.stdout)["admin_token"]
        return self.admin_token

    def start(self, log: Path | None = None) -> None:
        fh = open(log or self.data_dir / "server.log", "ab")
        self.proc = subprocess.Popen(self._cmd("run"), env=self.env(), stdout=fh, stderr=fh)
        wait_until(self._healthy, 60, what="baseline server /healthz")


def seed(server: ServerProc, devices: int, tree: Path | None) -> float:
    """Seed `server`'s database in a process importing `tree`'s models; returns seconds taken."""
    url = server.database_url or f"sqlite:///{server.data_dir / 'fleet.db'}"
    code = (
        "from fleet_server.db import make_engine; from tests.browser.seed import seed_devices; "
        f"e = make_engine({url!r}); seed_devices(e, {devices}); e.dispose()"
    )
    t0 = time.perf_counter()
    subprocess.run(_python_with(tree, code), check=True, cwd=REPO)
    return time.perf_counter() - t0


def launch(
    kind: str, root: Path, devices: int, database: str, tree: Path | None
) -> tuple[ServerProc, dict[str, Any]]:
    url, db_name = "", ""
    if database == "postgres":
        from tests.conftest import make_pg_database

        db_name, url = make_pg_database()
    cls = BaselineServer if tree else ServerProc
    server = cls(data_dir=root / kind, database_url=url)
    if isinstance(server, BaselineServer):
        server.tree = tree
    server.data_dir.mkdir(parents=True)
    server.init()
    server.start()
    seeded_s = seed(server, devices, tree)
    return server, {"devices": devices, "seed_s": round(seeded_s, 2), "pg_database": db_name}


# ---------------------------------------------------------------- measurements


@dataclass
class Series:
    values: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        v = self.values
        if not v:
            return {"n": 0}
        return {
            "n": len(v),
            "median": round(statistics.median(v), 1),
            "min": round(min(v), 1),
            "max": round(max(v), 1),
            "spread": round(max(v) - min(v), 1),
            "values": [round(x, 1) for x in v],
        }


def signed_in_page(browser: Any, server: ServerProc) -> Any:
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    page = ctx.new_page()
    page.goto(f"{server.url}/console")
    page.get_by_label("Operator token").fill(server.admin_token)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for(timeout=30_000)
    return page


def render_ms(page: Any, url: str, ready: str, arg: Any = None, timeout_s: float = 60) -> float:
    page.goto("about:blank")
    page.goto(url, wait_until="commit")
    handle = page.wait_for_function(ready, arg=arg, polling="raf", timeout=timeout_s * 1000)
    return float(handle.json_value())


def scrape_ms(url: str, n: int, series: dict[str, Series]) -> list[float]:
    """`n` sequential scrapes of /metrics on one keep-alive connection (as Prometheus does)."""
    out = []
    with httpx.Client(timeout=10) as client:
        client.get(url + "/metrics").raise_for_status()  # warm
        for _ in range(n):
            t0 = time.perf_counter()
            resp = client.get(url + "/metrics")
            out.append((time.perf_counter() - t0) * 1000)
            resp.raise_for_status()
    series.setdefault("metrics_scrape_all", Series()).values.extend(out)
    return out


def _view(name: str, page: Any, url: str, ready: str, arg: Any) -> Callable[[], tuple[str, float]]:
    return lambda: (name, render_ms(page, url, ready, arg))


def run(ns: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="edgeloop-bench-console-"))
    servers: dict[str, tuple[ServerProc, dict[str, Any]]] = {}
    series: dict[str, Series] = {}
    try:
        servers["new"] = launch("new", root, ns.devices, ns.database, None)
        servers["new_100"] = launch("new_100", root, 100, ns.database, None)
        if not ns.no_baseline:
            tree = _code_tree(BASELINE_COMMIT, root / "baseline-code")
            servers["baseline"] = launch("baseline", root, ns.devices, ns.database, tree)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
            pages = {k: signed_in_page(browser, s) for k, (s, _) in servers.items()}
            url = {k: s.url for k, (s, _) in servers.items()}
            # name -> (server, route, readiness predicate, its argument)
            views: dict[str, tuple[str, str, str, Any]] = {
                "fleet_page": ("new", "#/fleet", FLEET_READY, None),
                "device_page": ("new", f"#/device/{DEVICE}", DEVICE_READY, DEVICE),
                "fleet_page_100": ("new_100", "#/fleet", FLEET_READY, None),
                "device_page_100": ("new_100", f"#/device/{DEVICE}", DEVICE_READY, DEVICE),
            }
            if "baseline" in pages:
                views["baseline_fleet_page"] = ("baseline", "", BASELINE_FLEET_READY, None)
            runs: list[Callable[[], tuple[str, float]]] = [
                *(_view(name, pages[srv], f"{url[srv]}/console{route}", ready, arg)
                  for name, (srv, route, ready, arg) in views.items()),
                lambda: ("metrics_scrape", statistics.median(scrape_ms(url["new"], ns.scrapes, series))),
            ]  # fmt: skip
            for fn in runs:  # warm-up: first loads compile the page's scripts and fill caches
                fn()
            series.clear()
            for rep in range(ns.reps):
                k = rep % len(runs)
                for fn in runs[k:] + runs[:k]:
                    name, ms = fn()
                    series.setdefault(name, Series()).values.append(ms)
                    print(f"rep {rep}: {name} {ms:.1f} ms", flush=True)
            chromium_version = browser.version
            browser.close()
    finally:
        for s, info in servers.values():
            s.stop()
            if info["pg_database"]:
                from tests.conftest import drop_pg_database

                drop_pg_database(info["pg_database"])
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return {
        "command": "python -m bench.console.run " + " ".join(sys.argv[1:]),
        "database": ns.database,
        "devices": ns.devices,
        "reps": ns.reps,
        "scrapes_per_rep": ns.scrapes,
        "commit": commit.stdout.strip(),
        "baseline_commit": None if ns.no_baseline else BASELINE_COMMIT,
        "chromium": chromium_version,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "goals_ms": GOALS_MS,
        "servers": {k: info for k, (_, info) in servers.items()},
        "results_ms": {k: s.summary() for k, s in series.items()},
        "notes": {
            "metrics_scrape": "per repetition: the median of --scrapes sequential GET /metrics",
            "metrics_scrape_all": "every single scrape of every repetition",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=50, help="/metrics requests per repetition")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--no-baseline", action="store_true", help="skip the pre-issue-14 console")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("results.json"))
    ns = parser.parse_args()
    result = run(ns)
    scrape = result["results_ms"]["metrics_scrape_all"]
    values = sorted(scrape.pop("values", [0.0]))
    scrape["p95"] = round(values[int(0.95 * (len(values) - 1))], 1)
    ns.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["results_ms"], indent=2))


if __name__ == "__main__":
    main()
