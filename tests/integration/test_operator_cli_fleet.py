"""`edgeloop devices list`, `fleet summary` and `whoami` as processes against a real
`edgeloop-server` (SQLite) with the fleet view API (GET /api/v1/fleet/devices, /fleet/summary,
/me): filters, sort and paging happen on the server; --all walks every page."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from fleet_server.cliapi import CliExit
from fleet_server.db import make_engine
from fleet_server.models import Device
from fleet_server.settings import Settings
from tests.helpers.procs import BIN, ServerProc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("fleetcli") / "server")
    srv.data_dir.mkdir()
    srv.init()
    engine = make_engine(Settings(data_dir=srv.data_dir).resolved_database_url())
    with Session(engine) as s:
        for i in range(7):
            site = "a" if i < 4 else "b"
            s.add(Device(id=f"fc-{i}", profile="pi" if i % 2 else "generic-x86", labels={"site": site}))
        s.commit()
    engine.dispose()
    srv.start()
    yield srv
    assert srv.stop() == 0


def cli(server: ServerProc, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(HOME=str(home), COLUMNS="250", EDGELOOP_SERVER=server.url, EDGELOOP_TOKEN=server.admin_token)
    return subprocess.run([str(BIN / "edgeloop"), *args], env=env, capture_output=True, text=True, timeout=60)


def test_devices_list_filters_sorts_and_pages_on_the_server(server: ServerProc, tmp_path: Path) -> None:
    out = cli(
        server, tmp_path, "--json", "devices", "list", "--label", "site=a", "--sort=-id", "--limit", "2"
    )
    assert out.returncode == 0, out.stderr
    assert [d["id"] for d in json.loads(out.stdout)] == ["fc-3", "fc-2"]

    out = cli(server, tmp_path, "devices", "list", "--profile", "pi", "--all", "--json")
    assert sorted(d["id"] for d in json.loads(out.stdout)) == ["fc-1", "fc-3", "fc-5"]
    assert all("health" in d and "model" in d for d in json.loads(out.stdout))

    human = cli(server, tmp_path, "devices", "list", "--limit", "2", "--offset", "2")
    assert human.returncode == 0, human.stderr
    assert "Showing 3-4 of 7 device(s)" in human.stdout and "more: --offset 4" in human.stdout

    bad = cli(server, tmp_path, "devices", "list", "--limit", "100000")
    assert bad.returncode == CliExit.USAGE and "HTTP 422" in bad.stderr and "Traceback" not in bad.stderr
    assert cli(server, tmp_path, "devices", "list", "--health", "sparkly").returncode == CliExit.USAGE


def test_fleet_summary_and_whoami(server: ServerProc, tmp_path: Path) -> None:
    out = cli(server, tmp_path, "--json", "fleet", "summary")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["total"] == 7 and summary["by_profile"] == {"pi": 3, "generic-x86": 4}
    human = cli(server, tmp_path, "fleet", "summary")
    assert human.returncode == 0 and "7 device(s)" in human.stdout and "site" in human.stdout

    me = cli(server, tmp_path, "whoami", "--json")
    assert me.returncode == 0, me.stderr
    assert json.loads(me.stdout)["role"] == "admin"
