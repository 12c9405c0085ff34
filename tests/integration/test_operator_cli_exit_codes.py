"""The `edgeloop` operator CLI as a process against a real `edgeloop-server` process (SQLite): each
class of failure exits with its documented code (cliapi.CliExit) and one `edgeloop: ...` line on
stderr, never a traceback; with --json the failure is also a JSON object on stderr; the config
file's precedence (flag > env > file) and its permission check; `rollout watch` following a
rollout to its end, one JSON line per change."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from fleet_server.cliapi import CliExit
from fleet_server.db import make_engine
from fleet_server.models import Device
from fleet_server.settings import Settings
from tests.helpers.net import free_port
from tests.helpers.procs import BIN, ServerProc


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    srv = ServerProc(data_dir=tmp_path_factory.mktemp("cli") / "server")
    srv.data_dir.mkdir()
    srv.init()
    srv.start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), COLUMNS="200", **extra)
    return env


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edgeloop"), *args], env=_env(home, **env), capture_output=True, text=True, timeout=60
    )


def _as(server: ServerProc, token: str) -> list[str]:
    return ["--server", server.url, "--token", token]


@pytest.fixture(scope="module")
def tokens(server: ServerProc, home: Path) -> dict[str, str]:
    out = {"admin": server.admin_token}
    for role in ("operator", "viewer"):
        made = cli(
            home,
            *_as(server, server.admin_token),
            "--json",
            "operator-tokens",
            "create",
            role,
            "--role",
            role,
        )
        assert made.returncode == 0, made.stderr
        out[role] = json.loads(made.stdout)["token"]
    return out  # fmt: skip


class _Broken(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server's name
        body = b"<html>internal server error</html>"
        self.send_response(500)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def broken_server() -> Iterator[str]:
    """A web server that answers every request with an HTML 500 (a proxy in front of a crash)."""
    httpd = HTTPServer(("127.0.0.1", 0), _Broken)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _expect(result: subprocess.CompletedProcess[str], code: CliExit, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    if code != CliExit.OK:
        assert result.stderr.startswith("edgeloop: ") or result.stderr.startswith("usage: "), result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def test_each_class_of_failure_exits_with_its_documented_code(
    server: ServerProc, home: Path, tokens: dict[str, str], broken_server: str, tmp_path: Path
) -> None:
    admin, op, viewer = (_as(server, tokens[r]) for r in ("admin", "operator", "viewer"))
    _expect(cli(home, *admin, "tokens", "list"), CliExit.OK)

    # 2: usage, found by argparse, by the CLI before any request, or by the server (422)
    _expect(cli(home, *admin, "devices", "frobnicate"), CliExit.USAGE, "invalid choice")
    _expect(cli(home, *op, "devices", "label", "dev-x", "no-equals-sign"), CliExit.USAGE, "key=value")
    _expect(cli(home, *op, "tokens", "create", "--ttl", "5"), CliExit.USAGE, "HTTP 422", "ttl_s")
    absent = str(tmp_path / "absent.onnx")
    _expect(
        cli(home, *op, "release", "publish", absent, "--name", "m", "--version", "1"), CliExit.USAGE, absent
    )

    # 3: authentication (401) and authorization (403)
    _expect(cli(home, *_as(server, "op_nope.nope"), "tokens", "list"), CliExit.AUTH, "HTTP 401")
    _expect(cli(home, *viewer, "operator-tokens", "list"), CliExit.AUTH, "HTTP 403")

    # 4: not found
    _expect(cli(home, *viewer, "devices", "show", "no-such-device"), CliExit.NOT_FOUND, "HTTP 404")
    _expect(cli(home, *op, "rollout", "pause", "ro_nope"), CliExit.NOT_FOUND, "HTTP 404")

    # 5: the state forbids it (409)
    made = cli(home, *op, "--json", "tokens", "create")
    token_id = json.loads(made.stdout)["id"]
    _expect(cli(home, *op, "tokens", "revoke", token_id), CliExit.OK)
    _expect(cli(home, *op, "tokens", "revoke", token_id), CliExit.CONFLICT, "HTTP 409", "already revoked")

    # 6: nothing listening
    nowhere = ["--server", f"http://127.0.0.1:{free_port()}", "--token", tokens["admin"]]
    _expect(cli(home, *nowhere, "devices", "list"), CliExit.UNREACHABLE, "cannot reach fleet server")

    # 1: an answer the CLI did not expect (an HTML 500 from something in front of the server)
    _expect(cli(home, "--server", broken_server, "devices", "show", "x"), CliExit.UNEXPECTED, "HTTP 500")

    # 7: the command ran and the answer is bad: a tampered audit export
    export = tmp_path / "audit.jsonl"
    _expect(cli(home, *admin, "audit", "export", "--out", str(export)), CliExit.OK)
    lines = export.read_text().splitlines()
    forged = json.loads(lines[1])
    forged["action"] = "nothing.to.see"
    export.write_text("\n".join([lines[0], json.dumps(forged), *lines[2:]]) + "\n")
    broken = cli(home, "--json", "audit", "verify", "--file", str(export))
    _expect(broken, CliExit.CHECK_FAILED, "audit chain broken at seq 2")
    assert json.loads(broken.stdout)["ok"] is False


def test_json_failures_are_a_json_object_on_stderr(
    server: ServerProc, home: Path, tokens: dict[str, str]
) -> None:
    out = cli(home, *_as(server, tokens["viewer"]), "devices", "show", "ghost", "--json")
    _expect(out, CliExit.NOT_FOUND)
    assert out.stdout == ""
    err = json.loads(out.stderr.splitlines()[-1])
    assert err["exit_code"] == 4 and err["error"] == "not_found" and err["status"] == 404
    assert "ghost" in err["detail"]  # fmt: skip


def _config(path: Path, mode: int, **keys: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in keys.items()))
    path.chmod(mode)
    return path


def test_the_config_file_supplies_server_and_token_after_flags_and_environment(
    server: ServerProc, home: Path, tokens: dict[str, str], tmp_path: Path
) -> None:
    default = _config(
        home / ".config" / "edgeloop" / "config.toml", 0o600, server=server.url, token=tokens["viewer"]
    )
    _expect(cli(home, "rollout", "list"), CliExit.OK)  # the default path, no flag, no environment
    shown = json.loads(cli(home, "--json", "config", "show").stdout)
    assert shown["server"] == server.url and shown["config_file"] == str(default)
    assert shown["sources"] == {
        "server": f"config {default}",
        "token": f"config {default}",
        "ca_file": "default",
    }
    assert tokens["viewer"] not in json.dumps(shown) and shown["token"].startswith("op_")
    human = cli(home, "config", "show")
    assert human.returncode == 0 and tokens["viewer"] not in human.stdout and "****" in human.stdout

    # environment beats the file, a flag beats the environment
    _expect(cli(home, "operator-tokens", "list", EDGELOOP_TOKEN=tokens["admin"]), CliExit.OK)
    _expect(
        cli(home, "--token", tokens["viewer"], "operator-tokens", "list", EDGELOOP_TOKEN=tokens["admin"]),
        CliExit.AUTH,
        "HTTP 403",
    )
    # $EDGELOOP_CONFIG names another file
    other = _config(tmp_path / "other.toml", 0o600, server=f"http://127.0.0.1:{free_port()}")
    _expect(cli(home, "tokens", "list", EDGELOOP_CONFIG=str(other)), CliExit.UNREACHABLE)

    # a token in a file others can read is refused, with the fix
    default.chmod(0o644)
    _expect(
        cli(home, "rollout", "list"), CliExit.USAGE, "readable by group or others", f"chmod 600 {default}"
    )
    _expect(cli(home, "config", "show"), CliExit.USAGE, "chmod 600")
    _config(tmp_path / "bad.toml", 0o600, sever=server.url)
    _expect(
        cli(home, "--config", str(tmp_path / "bad.toml"), "tokens", "list"),
        CliExit.USAGE,
        "unknown key(s) sever",
    )
    (tmp_path / "garbage.toml").write_text("server = [")
    _expect(
        cli(home, "--config", str(tmp_path / "garbage.toml"), "tokens", "list"),
        CliExit.USAGE,
        "not valid TOML",
    )
    default.unlink()
    _expect(
        cli(home, "--ca-file", str(tmp_path / "no-ca.pem"), "--server", server.url, "tokens", "list"),
        CliExit.USAGE,
        "cannot load CA file",
    )


def _seed_devices(server: ServerProc, n: int) -> list[str]:
    engine = make_engine(Settings(data_dir=server.data_dir).resolved_database_url())
    ids = [f"watch-{i:02d}" for i in range(n)]
    with Session(engine) as s:
        for device_id in ids:
            s.add(Device(id=device_id, profile="generic-x86", labels={"cli": "watch"}))
        s.commit()
    engine.dispose()
    return ids


def test_rollout_watch_prints_one_json_line_per_change_until_the_rollout_ends(
    server: ServerProc, home: Path, tokens: dict[str, str], tmp_path: Path
) -> None:
    _seed_devices(server, 4)
    op = _as(server, tokens["operator"])
    (tmp_path / "m.bin").write_bytes(b"watch me" * 64)
    published = cli(home, *op, "--json", "release", "publish", str(tmp_path / "m.bin"), "--name", "w",
                    "--version", "1", "--profile", "generic-x86")  # fmt: skip
    assert published.returncode == 0, published.stderr
    seq = str(json.loads(published.stdout)["seq"])
    created = cli(home, *op, "--json", "rollout", "create", "--release", seq, "--label", "cli=watch",
                  "--percents", "50,100", "--min-window", "3600")  # fmt: skip
    assert created.returncode == 0, created.stderr
    rid = json.loads(created.stdout)["id"]

    watch = subprocess.Popen(
        [str(BIN / "edgeloop"), *op, "rollout", "watch", rid, "--json", "--interval", "0.2", "--exit-status"],
        env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["id"] == rid and first["state"] in ("running", "waiting")
        _expect(cli(home, *op, "rollout", "pause", rid, "--reason", "look"), CliExit.OK)
        _expect(cli(home, *op, "rollout", "abort", rid), CliExit.OK)
        code = watch.wait(30)
        rest = [json.loads(line) for line in watch.stdout.read().splitlines()]
        assert watch.stderr is not None
        stderr = watch.stderr.read()
    finally:
        if watch.poll() is None:
            watch.kill()
    states = [first["state"], *(r["state"] for r in rest)]
    assert "paused" in states and states[-1] == "aborted", states
    assert states.index("paused") < len(states) - 1
    assert code == CliExit.CHECK_FAILED  # --exit-status: it ended, but not completed
    assert f"rollout {rid} ended aborted" in stderr and "Traceback" not in stderr

    # without --json: the live view, exit 0 on an ended rollout
    done = cli(home, *op, "rollout", "watch", rid)
    _expect(done, CliExit.OK)
    assert rid in done.stdout and "aborted" in done.stdout
