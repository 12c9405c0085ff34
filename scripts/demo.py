"""`make demo`: the whole edgeloop loop on embedded defaults, on loopback, in one command.

Steps (each prints what it does; every process is real and is shut down cleanly at the end):
  1. fleet server: `edgeloop-server init` (CA, SQLite schema, admin token) and `run`
  2. four devices: bootstrap tokens from the operator CLI, `edgeloop-agent enroll`, `run`; when
     Mosquitto is installed, one of them talks MQTT through a broker `edgeloop-server mqtt-config`
     set up (mutual TLS with the fleet CA, ACL, CRL), the others gRPC
  3. the fleet through the operator CLI: devices online, reporting, telemetry arriving
  4. desired state: label a device, watch its agent reconcile the new generation
  5. compile: the digits CNN for a Raspberry Pi (ONNX int8) and a Coral (LiteRT int8)
  6. signed OTA release to the Pi: TUF verify, golden-set and shadow gates, hot swap, predictions
  7. drift: shifted inputs on the Pi; the monitor that shipped with its release reports an episode
  8. model registry: a small head model registered, compiled by the server, released on approval
  9. federated learning: labelled feedback on two devices, rounds on FleetGrid, the aggregated head
     becomes registry v2 (lineage), is compiled with v1's budgets and auto-released through OTA
  10. guard rails: a second agent refused, the OTA repository without a token, audit verify
  11. operator console: fleet summary (CLI), /readyz, /metrics; in headless Chromium (when
      installed) sign in, label a device from the page, screenshots in .demo/console-*.png
  12. shutdown: SIGTERM agents (they flush their outboxes) and the server
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import demo_console  # scripts/, on sys.path as the script's own directory
import httpx
from rich.console import Console
from rich.panel import Panel

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
BIN = Path(sys.executable).parent
WORK = ROOT / ".demo"
console = Console()
DEVICES = [
    ("pi-kitchen", "raspberry-pi-4"),
    ("jetson-dock", "jetson-orin-nano"),
    ("coral-gate", "coral-dev-board"),
    ("pi-garden", "raspberry-pi-4"),
]
LEARNERS = ["jetson-dock", "pi-garden"]  # the federated cohort (label learn=digits)
MQTT_DEVICE = "pi-garden"  # on MQTT (Sync and its federated link) when Mosquitto is installed
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else ""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def run(cmd: list[str], env: dict[str, str], **kw: Any) -> subprocess.CompletedProcess[str]:
    console.print(f"[dim]$ {' '.join(str(c) for c in cmd)}[/]")
    return subprocess.run(cmd, env=env, text=True, check=True, capture_output=True, **kw)


def wait_for(what: str, predicate: Any, timeout: float = 30.0) -> Any:
    with console.status(f"waiting for {what}…"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    http, enroll_port, device_port = free_port(), free_port(), free_port()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_")}
    base_env.setdefault("COLUMNS", "150")
    server_env = dict(
        base_env,
        EDGELOOP_DATA_DIR=str(WORK / "server"),
        EDGELOOP_HTTP_PORT=str(http),
        EDGELOOP_ENROLL_PORT=str(enroll_port),
        EDGELOOP_DEVICE_PORT=str(device_port),
        EDGELOOP_REPORT_INTERVAL_S="2",
    )
    procs: list[subprocess.Popen[bytes]] = []
    broker: subprocess.Popen[bytes] | None = None
    try:
        step("1. fleet server")
        init = json.loads(run([str(BIN / "edgeloop-server"), "init", "--json"], server_env).stdout)
        token = init["admin_token"]
        console.print(f"fleet CA at {init['ca']}; admin token minted (shown once)")
        if MOSQUITTO:
            broker, mqtt_env = _start_broker(server_env)
            server_env.update(mqtt_env)
        log = open(WORK / "server.log", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen([BIN / "edgeloop-server", "run"], env=server_env, stdout=log, stderr=log)
        )
        url = f"http://127.0.0.1:{http}"
        wait_for("server /healthz", lambda: _ok(url + "/healthz"))
        console.print(
            f"REST {url}/api/v1 · enrollment :{enroll_port} (TLS) · Sync :{device_port} (mutual TLS)"
        )
        console.print(f"operator console {url}/console (paste the admin token)")
        cli_env = dict(base_env, EDGELOOP_SERVER=url, EDGELOOP_TOKEN=token)

        step(f"2. {len(DEVICES)} devices enroll with one-time bootstrap tokens")
        agent_envs = []
        for device_id, profile in DEVICES:
            bt = json.loads(
                run(
                    [str(BIN / "edgeloop"), "--json", "tokens", "create", "--label", "site=demo-lab"], cli_env
                ).stdout
            )["token"]
            env = dict(
                base_env,
                EDGELOOP_AGENT_DEVICE_ID=device_id,
                EDGELOOP_AGENT_DEVICE_PROFILE=profile,
                EDGELOOP_AGENT_DEVICE_DATA_DIR=str(WORK / "devices" / device_id),
                EDGELOOP_AGENT_SERVER_ENROLL_ENDPOINT=f"localhost:{enroll_port}",
                EDGELOOP_AGENT_SERVER_CA_FILE=str(WORK / "server" / "pki" / "ca.pem"),
                EDGELOOP_AGENT_TELEMETRY_INTERVAL_S="0.5",
                EDGELOOP_AGENT_OTA_BASE_URL=f"{url}/ota",
                EDGELOOP_AGENT_OTA_TRUSTED_ROOT=str(
                    WORK / "server" / "ota" / "repo" / "metadata" / "1.root.json"
                ),
                EDGELOOP_AGENT_OTA_POLL_INTERVAL_S="2",
                # The demo box is busy compiling: do not wait for an idle CPU or a charger to train.
                EDGELOOP_AGENT_FEDERATED_REQUIRE_IDLE="false",
                EDGELOOP_AGENT_FEDERATED_REQUIRE_CHARGING="false",
                EDGELOOP_AGENT_FEDERATED_REQUIRE_UNMETERED="false",
            )
            if broker is not None and device_id == MQTT_DEVICE:
                env.update(
                    EDGELOOP_AGENT_SERVER_TRANSPORT="mqtt",
                    EDGELOOP_AGENT_SERVER_MQTT_ENDPOINT=server_env["EDGELOOP_MQTT_URL"],
                )
            out = run([str(BIN / "edgeloop-agent"), "enroll", "--token", bt], env)
            how = "MQTT (mutual TLS via Mosquitto)" if "EDGELOOP_AGENT_SERVER_TRANSPORT" in env else "gRPC"
            console.print(
                f"  {out.stdout.strip()} ({profile}, {how}); key generated on the device, mode 0600"
            )
            agent_envs.append(env)
        for (device_id, _), env in zip(DEVICES, agent_envs, strict=True):
            alog = open(WORK / f"{device_id}.log", "wb")  # noqa: SIM115
            procs.append(subprocess.Popen([BIN / "edgeloop-agent", "run"], env=env, stdout=alog, stderr=alog))

        step("3. the fleet, as an operator sees it")
        api = httpx.Client(base_url=url + "/api/v1", headers={"Authorization": f"Bearer {token}"})
        wait_for(
            "all devices online with telemetry",
            lambda: (
                all(
                    d["online"] and d["last_seen_at"] and api.get(f"/devices/{d['id']}/telemetry").json()
                    for d in api.get("/devices").json()
                )
                and len(api.get("/devices").json()) == len(DEVICES)
            ),
        )
        time.sleep(1.5)
        sys.stdout.write(run([str(BIN / "edgeloop"), "devices", "list"], cli_env).stdout)
        transports = {d["id"]: d["transport"] for d in api.get("/devices").json()}
        console.print("  transports: " + ", ".join(f"{d} {t}" for d, t in sorted(transports.items())))
        if broker is not None and transports.get(MQTT_DEVICE) != "mqtt":
            raise SystemExit(f"demo: {MQTT_DEVICE} is not reporting over MQTT")
        rows = api.get(f"/devices/{DEVICES[0][0]}/telemetry", params={"limit": 1000}).json()
        console.print(
            f"{DEVICES[0][0]}: {len(rows)} telemetry records stored, seq {rows[0]['seq']}..{rows[-1]['seq']}"
        )

        step("4. desired state: label a device, its agent reconciles")
        console.print(
            run([str(BIN / "edgeloop"), "devices", "label", DEVICES[1][0], "tier=canary"], cli_env).stdout
        )
        status = wait_for(
            "agent to apply generation 2",
            lambda: (s := _status(agent_envs[1])).get("applied_generation") == 2 and s,
        )
        console.print(f"  {DEVICES[1][0]} applied generation {status['applied_generation']}")

        step("5. compile: the data scientist's model, for two device classes")
        from demo_model import prepare

        model = prepare(WORK / "model")
        compiled = WORK / "compiled"
        build = run(
            [str(BIN / "edgeloop-compile"), "build", "--model", "tests.fixtures.digits:make_digits_cnn",
             "--weights", str(model["weights"]), "--profile", "raspberry-pi-4", "--profile", "coral-dev-board",
             "--calib", str(model["calib"]), "--eval", str(model["eval"]), "--out", str(compiled), "--json"],
            dict(base_env, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
        report = json.loads((compiled / "report.json").read_text())
        for prof, art in json.loads(build.stdout)["chosen"].items():
            chosen = report["profiles"][prof]["chosen"]
            console.print(f"  {prof}: {chosen} -> {art['path']} ({art['size_bytes']:,} B, {art['runtime']})")
        console.print(f"  drift reference: {report['drift_reference'].get('monitors')}")

        step("6. signed OTA release to the Raspberry Pi (TUF, golden-set + shadow gates)")
        pi, pi_env = DEVICES[0][0], agent_envs[0]
        published = json.loads(
            run(
                [str(BIN / "edgeloop"), "--json", "release", "publish", str(compiled / "raspberry-pi-4" / "model.onnx"),
                 "--name", "digits", "--version", "1", "--golden", str(model["golden"]),
                 "--profile", "raspberry-pi-4", "--report", str(compiled / "report.json"),
                 "--drift-reference", str(compiled / "drift_reference.json"), "--deploy", pi],
                cli_env,
            ).stdout
        )  # fmt: skip
        console.print(f"  release published: {json.dumps(published)[:200]}")
        served = wait_for(
            f"{pi} to verify, gate and switch to digits@1",
            lambda: _predict(pi_env, model["normal"]),
            timeout=120,
        )
        console.print(f"  {pi} serves {served['model']}: predictions {served['classes'][:16]}")

        step("7. drift: the Pi's camera goes bright; its monitor (shipped in the release) notices")
        for _ in range(6):
            _predict(pi_env, model["shifted"])
        episodes = wait_for(
            "a drift episode from pi-kitchen",
            lambda: [e for e in _cli_json(cli_env, "drift", "list") if e["device_id"] == pi],
            timeout=90,
        )
        sys.stdout.write(run([str(BIN / "edgeloop"), "drift", "list"], cli_env).stdout)
        console.print(f"  {len(episodes)} episode(s) from {pi}; the policy hook can open a retraining round")

        step("8. model registry: a small head model, compiled by the server, released on approval")
        from demo_model import prepare_head

        head = prepare_head(WORK / "head", LEARNERS)
        registered = _cli_json(
            cli_env, "models", "register", str(head["model"]), "--name", "digits-head",
            "--profile", "raspberry-pi-4", "--profile", "jetson-orin-nano", "--calib", str(head["calib"]),
            "--eval", str(head["eval"]), "--golden", str(head["golden"]), "--golden-threshold", "0.5",
            "--max-accuracy-drop", "0.02",
        )  # fmt: skip
        console.print(f"  registered digits-head@{registered['version']}: 40 central samples, compiling…")
        v1 = wait_for(
            "the server's compile job (edgeloop-compile in a child process)",
            lambda: (
                (v := _cli_json(cli_env, "models", "show", "digits-head", "1"))["status"]
                in ("awaiting_approval", "failed", "rejected")
                and v
            ),
            timeout=300,
        )
        if v1["status"] != "awaiting_approval":
            raise SystemExit(f"demo: digits-head@1 {v1['status']}: {v1['detail']}")
        for label_target in LEARNERS:
            run([str(BIN / "edgeloop"), "devices", "label", label_target, "learn=digits"], cli_env)
        console.print(
            run([str(BIN / "edgeloop"), "models", "approve", "digits-head", "1", *[a for d in LEARNERS for a in ("--device", d)]], cli_env).stdout.rstrip()
        )  # fmt: skip
        learner_envs = {d: agent_envs[[x for x, _ in DEVICES].index(d)] for d in LEARNERS}
        for device_id, env in learner_envs.items():
            served = wait_for(
                f"{device_id} to install digits-head@1",
                lambda env=env: _predict(env, head["head_inputs"], "digits-head@1"),
                120,
            )
            console.print(f"  {device_id} serves {served['model']}")
        deployments = [
            r["deployment_id"]
            for r in _cli_json(cli_env, "models", "show", "digits-head", "1")["releases"].values()
        ]
        wait_for(
            "the watch window to pass and both devices to commit (devices do not train mid-update)",
            lambda: all(row["state"] == "committed" for dep in deployments for row in _cli_json(cli_env, "release", "status", dep)),
            timeout=180,
        )  # fmt: skip

        step(
            "9. devices learn: labelled feedback -> federated rounds -> registry v2 -> compiler -> signed OTA"
        )
        for device_id, env in learner_envs.items():
            sock = Path(env["EDGELOOP_AGENT_DEVICE_DATA_DIR"]) / "inference.sock"
            fb = json.loads(
                run(
                    [
                        str(BIN / "edgeloop-agent"),
                        "feedback",
                        "--npz",
                        str(head[f"shard:{device_id}"]),
                        "--socket",
                        str(sock),
                        "--json",
                    ],
                    env,
                ).stdout
            )
            console.print(
                f"  {device_id}: {fb.get('accepted')} labelled samples stored on the device (they never leave it)"
            )
        run([str(BIN / "edgeloop"), "models", "policy", "digits-head", "--auto-release", "on"], cli_env)
        started = _cli_json(
            cli_env, "fl", "start", "--model", "digits-head", "--label", "learn=digits", "--rounds", "5",
            "--min-nodes", "2", "--lr", "0.5", "--norm-bound", "5", "--timeout", "60",
        )  # fmt: skip
        run_id = started["run_id"]
        wait_for(
            "5 federated rounds on FleetGrid",
            lambda: (
                _cli_json(cli_env, "fl", "status", run_id)["run"]["status"]
                in ("completed", "failed", "cancelled")
            ),
            timeout=300,
        )
        sys.stdout.write(run([str(BIN / "edgeloop"), "fl", "status", run_id], cli_env).stdout)
        status = _cli_json(cli_env, "fl", "status", run_id)
        if status["run"]["status"] != "completed" or not any(r["results"] for r in status["rounds"]):
            raise SystemExit(
                f"demo: the federated run trained nothing: {status['run']['detail'] or status['rounds']}"
            )
        v2 = wait_for(
            "digits-head@2: registered from the run, compiled with v1's budgets, judged, auto-released",
            lambda: (
                (v := _cli_json(cli_env, "models", "list", "--name", "digits-head"))
                and v[0]["version"] == 2
                and v[0]["status"] in ("released", "failed", "rejected", "awaiting_approval")
                and v[0]
            ),
            timeout=300,
        )
        sys.stdout.write(
            run([str(BIN / "edgeloop"), "models", "list", "--name", "digits-head"], cli_env).stdout
        )
        if v2["status"] != "released":
            raise SystemExit(f"demo: digits-head@2 {v2['status']}: {v2['detail']}")
        if not (v2["accuracy"] or 0) > (v1["accuracy"] or 0):
            raise SystemExit(
                f"demo: federated v2 ({v2['accuracy']}) is not better than v1 ({v1['accuracy']})"
            )
        console.print(
            f"  fp32 accuracy v1 {v1['accuracy']:.1%} -> v2 {v2['accuracy']:.1%}, lineage run {run_id[:12]}"
        )
        for device_id, env in learner_envs.items():
            served = wait_for(
                f"{device_id} to verify, gate and switch to digits-head@2",
                lambda env=env: _predict(env, head["head_inputs"], "digits-head@2"),
                180,
            )
            console.print(f"  {device_id} serves {served['model']}: predictions {served['classes']}")

        step("10. guard rails: what a careless operator or a hostile device meets")
        twice = subprocess.run(
            [str(BIN / "edgeloop-agent"), "run"],
            env=agent_envs[0],
            capture_output=True,
            text=True,
            timeout=60,
        )
        console.print(f"  a second agent on {DEVICES[0][0]}'s data directory: exit {twice.returncode}, "
                      f"{(twice.stderr.strip().splitlines() or [''])[-1]}")  # fmt: skip
        if twice.returncode != 20:
            raise SystemExit("demo: a second agent on one data directory was not refused")
        anon = httpx.get(f"{url}/ota/metadata/snapshot.json", timeout=10)
        console.print(f"  the OTA repository without a device token: HTTP {anon.status_code} "
                      f"({anon.json().get('detail', '')})")  # fmt: skip
        huge = api.get("/devices", params={"offset": 2**63})
        console.print(f"  GET /devices?offset=2^63: HTTP {huge.status_code}, never a 500")
        ingest = httpx.get(url + "/healthz", timeout=10).json()["ingest"]
        console.print(
            f"  ingest: {ingest['flushes']} group commits, {ingest['rejected_records']} records refused"
        )
        verify = run([str(BIN / "edgeloop"), "audit", "verify"], cli_env)
        sys.stdout.write(verify.stdout)

        step("11. operator console, readiness and metrics")
        demo_console.show(
            url=url,
            token=token,
            device_id=DEVICES[0][0],
            out=WORK,
            cli=lambda *a: run([str(BIN / "edgeloop"), *a], cli_env),
            console=console,
        )

        step("12. shutdown")
        for proc, (device_id, _), env in zip(procs[1:], DEVICES, agent_envs, strict=True):
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
            s = _status(env)
            console.print(
                f"  {device_id}: exit {code}, outbox queued {s['telemetry_queued']}, "
                f"acked {s['telemetry_acked']}, dropped {s['telemetry_dropped_total']}"
            )
        procs[0].send_signal(signal.SIGTERM)
        console.print(f"  server: exit {procs[0].wait(30)}")
        if broker is not None:
            broker.send_signal(signal.SIGTERM)
            console.print(f"  mosquitto: exit {broker.wait(30)}")
        console.print(Panel.fit(f"demo complete — logs and state in {WORK}", style="green"))
        return 0
    finally:
        for proc in [*procs, *([broker] if broker is not None else [])]:
            if proc.poll() is None:
                proc.kill()


def _start_broker(server_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A Mosquitto configured the operator's way (`edgeloop-server mqtt-config`) on a free port."""
    import getpass

    port = free_port()
    files = json.loads(
        run(
            [str(BIN / "edgeloop-server"), "mqtt-config", "--out", str(WORK / "broker"), "--port", str(port),
             "--bind", "127.0.0.1", "--host", "localhost", "--run-as", getpass.getuser(), "--json"],
            server_env,
        ).stdout
    )  # fmt: skip
    log = open(WORK / "mosquitto.log", "wb")  # noqa: SIM115
    broker = subprocess.Popen([MOSQUITTO, "-c", files["config"]], stdout=log, stderr=log)
    wait_for("Mosquitto to listen", lambda: _listening(port) or broker.poll() is not None)
    if broker.poll() is not None:
        raise SystemExit(f"demo: mosquitto exited {broker.returncode}; see {WORK / 'mosquitto.log'}")
    console.print(
        f"Mosquitto on :{port}: mutual TLS with the fleet CA, ACL per device id, CRL ({files['config']})"
    )
    return broker, {
        "EDGELOOP_MQTT_URL": f"mqtts://localhost:{port}",
        "EDGELOOP_MQTT_CA_FILE": files["ca"],
        "EDGELOOP_MQTT_CLIENT_CERT": files["server_cert"],
        "EDGELOOP_MQTT_CLIENT_KEY": files["server_key"],
        "EDGELOOP_MQTT_CRL_FILE": files["crl"],  # no SIGHUP reload hook: see README (Mosquitto 2.0.11)
    }


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _cli_json(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run([BIN / "edgeloop", "--json", *args], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"demo: edgeloop {' '.join(args)} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def _predict(env: dict[str, str], npy: Path, want: str = "") -> dict[str, Any] | None:
    sock = Path(env["EDGELOOP_AGENT_DEVICE_DATA_DIR"]) / "inference.sock"
    if not sock.exists():
        return None
    out = subprocess.run(
        [BIN / "edgeloop-agent", "predict", "--input", str(npy), "--socket", str(sock), "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        return None
    doc = json.loads(out.stdout)
    outputs = next(iter(doc.get("outputs", {}).values()), None)
    classes = [int(max(range(len(row)), key=row.__getitem__)) for row in outputs] if outputs else []
    served = f"{doc.get('model')}@{doc.get('version')}"
    if want and served != want:
        return None
    return {"model": served, "classes": classes}


def _status(env: dict[str, str]) -> dict[str, Any]:
    out = subprocess.run(
        [BIN / "edgeloop-agent", "status", "--json"], env=env, capture_output=True, text=True
    )
    return dict(json.loads(out.stdout)) if out.returncode == 0 else {}


if __name__ == "__main__":
    sys.exit(main())
