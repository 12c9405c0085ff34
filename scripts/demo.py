"""`make demo`: edgeloop's whole loop, closed, on embedded defaults, on loopback, in one command.

Real `edgeloop-server` and `edgeloop-agent` processes (SQLite, the server's local artifact folder;
one device on MQTT through a Mosquitto the demo configures, when installed):

  1. fleet server; N devices (Pis, a Jetson, a Coral) enroll with one-time bootstrap tokens
  2. the fleet as an operator sees it; desired state: label a device, its agent reconciles
  3. compile: the digits CNN for the Coral (LiteRT int8), signed release, the Coral serves it
  4. the loop on the federated digits head (scripts/demo_loop.py): registry v1 -> phased rollout
     (canary -> all) -> apps stream digits -> cameras of site north turned (drift on a cohort),
     pi-south's sensor stuck (a device anomaly) -> the drift policy opens a federated run by itself
     (secure aggregation, the stuck device excluded) -> v2 compiled, judged, rolled out by delta ->
     a silently bad v3 halted at the canary and rolled back
  5. guard rails; operator console (scripts/demo_console.py); clean shutdown
  6. the timeline (`WORK/timeline.json`, updated after every stage) and `WORK/report.html`

Flags: --devices N (>= 5), --quick (shorter windows and fewer rounds, same stages), --full-files
(agents fetch whole files, no deltas: to compare bytes), --keep-running (leave everything up for the
console until Ctrl-C), --work DIR (default .demo), --json (print the timeline at the end).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import demo_console  # noqa: E402
import httpx  # noqa: E402
from demo_fleet import BIN, CORAL, Fleet, agent_status, cli_json, console, plan_devices, run, wait_for  # noqa: E402
from demo_loop import Loop, run_loop, submit_v1  # noqa: E402
from demo_model import prepare_loop  # noqa: E402
from demo_timeline import Timeline  # noqa: E402
from rich.panel import Panel  # noqa: E402


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="edgeloop's closed loop on real processes")
    p.add_argument("--devices", type=int, default=6, help="real agents (>= 5; default 6)")
    p.add_argument("--quick", action="store_true", help="shorter windows, fewer rounds, same stages")
    p.add_argument("--full-files", action="store_true", help="agents fetch whole files (no deltas)")
    p.add_argument("--keep-running", action="store_true", help="leave server and agents up until Ctrl-C")
    p.add_argument("--work", type=Path, default=ROOT / ".demo", help="state, logs, timeline, report")
    p.add_argument("--json", action="store_true", help="print the timeline JSON at the end")
    return p.parse_args(argv)


def step(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM (a test's timeout, a CI cancel) ends the demo through its `finally`: no orphans.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work: Path = args.work.resolve()
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tl = Timeline(work / "timeline.json", quick=args.quick)
    fleet = Fleet(work, plan_devices(args.devices), full_files=args.full_files)
    stream = None
    saved = False  # timeline.json written with its final wall time (the report prints it)
    compile_job: tuple[subprocess.Popen[str], dict[str, Path]] | None = None
    try:
        with tl.stage("fleet", f"fleet server and {args.devices} devices enroll") as f:
            step("1. fleet server and devices")
            fleet.start_server()
            tl.doc["console_url"] = f"{fleet.url}/console"
            drifted = [d.id for d in fleet.devices if d.cohort == "drifted"]
            loop = Loop(fleet, tl, prepare_loop(work / "head", drifted), args.quick)
            submit_v1(loop)  # compiled by the server while devices enroll and the CNN compiles
            compile_job = start_compile(fleet, work)
            fleet.enroll_and_start()
            show_fleet(fleet, f)
            tl.doc["devices"] = [
                {"id": d.id, "profile": d.profile, "transport": fleet.transport(d.id), "cohort": d.cohort,
                 "site": d.site} for d in fleet.devices
            ]  # fmt: skip
        with tl.stage("desired_state", "desired state: label a device, its agent reconciles") as f:
            step("2. desired state")
            target = fleet.devices[4].id
            run([BIN / "edgeloop", "devices", "label", target, "tier=canary"], fleet.cli_env)
            status = wait_for(
                f"{target} to apply generation 2",
                lambda: (s := agent_status(fleet.agent_envs[target])).get("applied_generation") == 2 and s,
            )
            f["applied_generation"] = status["applied_generation"]
        step("3. compile the digits CNN for the Coral; signed release")
        assert compile_job is not None
        compile_coral(fleet, tl, work, compile_job)
        step("4. the loop: rollout -> drift -> federated -> delta -> bad release stopped")
        try:
            run_loop(loop)
        finally:
            stream = loop.stream
        step("5. guard rails, operator console")
        with tl.stage("guard_rails", "guard rails and the operator console") as f:
            guard_rails(fleet, f)
            demo_console.show(
                url=fleet.url, token=fleet.token, device_id=fleet.devices[0].id, out=work,
                cli=lambda *a: run([BIN / "edgeloop", *a], fleet.cli_env), console=console,
            )  # fmt: skip
        if args.keep_running:
            console.print(Panel.fit(f"console {fleet.url}/console\nadmin token {fleet.token}\nCtrl-C to stop",
                                    title="keep running", style="green"))  # fmt: skip
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        with tl.stage("shutdown", "clean shutdown (agents flush their outboxes)") as f:
            step("6. shutdown")
            if stream is not None:
                stream.stop()
            lines = fleet.stop()
            for line in lines:
                console.print(line)
            f["processes"] = len(lines)
            tl.doc["ota"]["demo_total_bytes"] = f["ota_bytes_all_releases"] = ota_total(fleet)
        tl.summary(console)
        tl.save()  # the final wall time, before the report prints it (it must match timeline.json)
        saved = True
        report = render(tl, work)
        console.print(Panel.fit(f"demo complete — report {report}\nlogs and state in {work}", style="green"))
        if args.json:
            print(json.dumps(tl.doc, indent=2, default=str))
        return 0
    except BaseException:
        tl.save()  # once: the report prints this wall time, so the finally below must not move it
        saved = True
        console.print(
            f"[red]demo failed; what happened is in {work / 'timeline.json'}, report {render(tl, work)}[/]"
        )
        raise
    finally:
        if stream is not None:
            stream.stop()
        if compile_job is not None and compile_job[0].poll() is None:
            compile_job[0].kill()
        fleet.kill()
        if not saved:
            tl.save()


def render(tl: Timeline, work: Path) -> Path | str:
    try:
        import demo_report

        return Path(demo_report.render(tl.doc, work))
    except Exception as err:  # the report must never hide the demo's own outcome
        return f"(no report: {type(err).__name__}: {err})"


def ota_total(fleet: Fleet) -> int:
    """Bytes every agent fetched for every release of the run (their OTA reports, in their logs)."""
    import re

    pattern = re.compile(r"fetched_bytes=(\d+)")
    return sum(
        int(m.group(1))
        for d in fleet.devices
        for m in pattern.finditer((fleet.work / f"{d.id}.log").read_text(errors="replace"))
    )


def show_fleet(fleet: Fleet, facts: dict[str, Any]) -> None:
    with fleet.api() as api:
        wait_for(
            "all devices online with telemetry",
            lambda: (
                len(devs := api.get("/devices").json()) == len(fleet.devices)
                and all(d["online"] and d["last_seen_at"] for d in devs)
                and all(api.get(f"/devices/{d['id']}/telemetry").json() for d in devs)
            ),
            240,
        )
        sys.stdout.write(run([BIN / "edgeloop", "devices", "list"], fleet.cli_env, quiet=True).stdout)
        transports = {d["id"]: d["transport"] for d in api.get("/devices").json()}
    if fleet.broker is not None and transports.get(fleet.mqtt_device) != "mqtt":
        raise SystemExit(f"demo: {fleet.mqtt_device} is not reporting over MQTT")
    facts.update(devices=len(transports), mqtt=sum(t == "mqtt" for t in transports.values()))


def start_compile(fleet: Fleet, work: Path) -> tuple[subprocess.Popen[str], dict[str, Path]]:
    """The data scientist's CNN, trained (~3 s) and handed to `edgeloop-compile` in the background."""
    from demo_model import prepare

    model = prepare(work / "model")
    cmd = [BIN / "edgeloop-compile", "build", "--model", "tests.fixtures.digits:make_digits_cnn",
           "--weights", model["weights"], "--profile", CORAL, "--calib", model["calib"], "--eval", model["eval"],
           "--out", work / "compiled", "--json"]  # fmt: skip
    console.print(f"[dim]$ {' '.join(str(c) for c in cmd)} &[/]")
    proc = subprocess.Popen([str(c) for c in cmd], env=dict(fleet.base_env, PYTHONPATH=str(ROOT)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    return proc, model


def compile_coral(
    fleet: Fleet, tl: Timeline, work: Path, job: tuple[subprocess.Popen[str], dict[str, Path]]
) -> None:
    proc, model = job
    coral = [d.id for d in fleet.devices if d.profile == CORAL]
    with tl.stage("compile", "compile: the digits CNN for the Coral (LiteRT int8), signed release") as f:
        compiled = work / "compiled"
        stdout, stderr = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise SystemExit(f"demo: edgeloop-compile exited {proc.returncode}: {stderr.strip()[-800:]}")
        build = subprocess.CompletedProcess(proc.args, 0, stdout, stderr)
        report = json.loads((compiled / "report.json").read_text())
        art = json.loads(build.stdout)["chosen"][CORAL]
        chosen = report["profiles"][CORAL]["chosen"]
        console.print(f"  {CORAL}: {chosen} -> {art['path']} ({art['size_bytes']:,} B, {art['runtime']})")
        f.update(recipe=chosen, artifact_bytes=art["size_bytes"])
        if not coral:
            return
        golden = coral_golden(compiled / art["path"], model["golden"])
        published = cli_json(
            fleet.cli_env, "release", "publish", str(compiled / art["path"]), "--name", "digits", "--version", "1",
            "--golden", str(golden), "--profile", CORAL, "--report", str(compiled / "report.json"),
            "--drift-reference", str(compiled / "drift_reference.json"), "--deploy", *coral,
        )  # fmt: skip
        from demo_stream import wait_version

        for d in coral:
            if not wait_version(fleet.sock(d), "digits@1", 180):
                raise SystemExit(f"demo: {d} did not verify, gate and switch to digits@1")
        console.print(f"  {', '.join(coral)} serve digits@1 (release {published.get('seq', '?')})")
        f["coral_serving"] = len(coral)


def coral_golden(tflite: Path, golden: Path) -> Path:
    """The golden set keyed by the LiteRT artifact's input name: the converter names it
    `serving_default_args_0`, not the ONNX model's `input`, and the agent binds golden arrays by
    name (found by this demo: one golden set cannot serve both artifacts of a model)."""
    import numpy as np

    from agent.inference.tflite_backend import TfliteRuntime

    name = TfliteRuntime(tflite).signature.inputs[0].name
    data = np.load(golden)
    out = golden.with_name("golden-coral.npz")
    np.savez(out, **{f"input:{name}": data["input:input"]}, labels=data["labels"])
    return out


def guard_rails(fleet: Fleet, facts: dict[str, Any]) -> None:
    first = fleet.devices[0].id
    twice = subprocess.run([BIN / "edgeloop-agent", "run"], env=fleet.agent_envs[first], capture_output=True,
                           text=True, timeout=60)  # fmt: skip
    console.print(f"  a second agent on {first}'s data directory: exit {twice.returncode}")
    if twice.returncode != 20:
        raise SystemExit("demo: a second agent on one data directory was not refused")
    anon = httpx.get(f"{fleet.url}/ota/metadata/snapshot.json", timeout=10)
    console.print(f"  the OTA repository without a device token: HTTP {anon.status_code}")
    if anon.status_code not in (401, 403):
        raise SystemExit("demo: the OTA repository answered without a device token")
    with fleet.api() as api:
        huge = api.get("/devices", params={"offset": 2**63})
    console.print(f"  GET /devices?offset=2^63: HTTP {huge.status_code}, never a 500")
    verify = run([BIN / "edgeloop", "audit", "verify"], fleet.cli_env, quiet=True)
    console.print("  " + verify.stdout.strip().replace("\n", "\n  "))
    facts.update(
        second_agent_exit=twice.returncode, ota_anonymous=anon.status_code, offset_2_63=huge.status_code
    )


if __name__ == "__main__":
    sys.exit(main())
