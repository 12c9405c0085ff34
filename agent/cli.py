"""`edgeloop-agent`: enroll | run | status | install | feedback | version (+ predict, models).

Parses, loads config, calls one function. Output is plain text (or JSON with --json): the agent
extra carries no rich, and these commands run on the device.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from agent import __version__
from agent.errors import (
    AgentError,
    ConfigError,
    DataDirLockedError,
    EnrollmentError,
    ExitCode,
    InferenceError,
    InstallRefusedError,
    IntegrityError,
    InvalidInputError,
    ModelLoadError,
    StorageError,
    TransportError,
)
from agent.fsutil import DataDirLock


def _config(ns: argparse.Namespace) -> object:
    from agent.config import load

    return load(Path(ns.config) if ns.config else None)


def _enroll(ns: argparse.Namespace) -> int:
    from agent.config import AgentConfig
    from agent.daemon import enroll_device

    cfg = _config(ns)
    assert isinstance(cfg, AgentConfig)
    token = ns.token or os.environ.get("EDGELOOP_BOOTSTRAP_TOKEN", "")
    if not token:
        raise ConfigError("a bootstrap token is required (--token or EDGELOOP_BOOTSTRAP_TOKEN)")
    with DataDirLock(cfg.data_path):  # writes the identity and state.json
        device_id = asyncio.run(enroll_device(cfg, token))
    print(json.dumps({"device_id": device_id, "enrolled": True}) if ns.json else f"enrolled as {device_id}")
    return ExitCode.OK


def _run(ns: argparse.Namespace) -> int:
    from agent.config import AgentConfig
    from agent.daemon import run_daemon
    from agent.identity import IdentityStore

    cfg = _config(ns)
    assert isinstance(cfg, AgentConfig)
    with DataDirLock(cfg.data_path):  # held for the daemon's life, before any state is read
        if not IdentityStore(cfg.data_path).is_enrolled():
            print(
                "edgeloop-agent: not enrolled; run `edgeloop-agent enroll --token ...` first", file=sys.stderr
            )
            return ExitCode.NOT_ENROLLED
        asyncio.run(run_daemon(cfg))
    return ExitCode.OK


def _status(ns: argparse.Namespace) -> int:
    from agent.config import AgentConfig
    from agent.outbox import TelemetryOutbox

    cfg = _config(ns)
    assert isinstance(cfg, AgentConfig)
    status: dict[str, object] = {"enrolled": (cfg.data_path / "identity" / "device.json").exists()}
    try:
        status.update(json.loads((cfg.data_path / "status.json").read_text()))
    except (OSError, ValueError):
        pass
    if (cfg.data_path / "outbox.db").exists():
        outbox = TelemetryOutbox(cfg.data_path / "outbox.db", max_records=cfg.telemetry.queue_max_records)
        stats = outbox.stats()
        outbox.close()
        status.update(
            telemetry_queued=stats.queued,
            telemetry_dropped_total=stats.dropped_total,
            telemetry_last_seq=stats.last_seq,
        )
    if ns.json:
        print(json.dumps(status))
    else:
        for key, value in status.items():
            print(f"{key:>24}: {value}")
    return ExitCode.OK


def _install(ns: argparse.Namespace) -> int:
    """Local development install of a model file into a slot (the daemon must be stopped)."""
    from agent.config import AgentConfig
    from agent.inference.registry import ProfileLoader
    from agent.ota.local import LocalInstall, install_local
    from agent.profile import load_profile

    cfg = _config(ns)
    assert isinstance(cfg, AgentConfig)
    artifact = Path(ns.file)
    request = LocalInstall(
        artifact=artifact,
        name=ns.name or artifact.stem,
        version=ns.model_version or f"local-{artifact.stem}",
        slot=ns.slot,
        sha256=ns.sha256 or "",
        warmup=Path(ns.warmup) if ns.warmup else None,
        golden=Path(ns.golden) if ns.golden else None,
        golden_threshold=ns.golden_threshold,
    )
    profile = load_profile(cfg.device.profile)
    with DataDirLock(cfg.data_path):  # the daemon holds it while it runs: never install under it
        try:
            result = asyncio.run(
                install_local(
                    request,
                    slots_root=cfg.slots_root,
                    ota_dir=cfg.data_path / "ota",
                    loader=ProfileLoader(profile),
                )
            )
        except InvalidInputError as err:
            print(f"edgeloop-agent: install refused: {err}", file=sys.stderr)
            return ExitCode.USAGE
        except IntegrityError as err:
            print(f"edgeloop-agent: install refused: {err}", file=sys.stderr)
            return ExitCode.INTEGRITY
        except (InstallRefusedError, ModelLoadError) as err:
            print(f"edgeloop-agent: install refused: {err}", file=sys.stderr)
            return ExitCode.REFUSED
    if ns.json:
        print(json.dumps(dataclasses.asdict(result)))
        return ExitCode.OK
    where = "serving from current/" if result.slot == "current" else "staged in candidate/ (not serving)"
    print(f"installed {result.name}@{result.version} ({result.bytes} bytes, sha256 {result.sha256}): {where}")
    for step in result.steps:
        print(f"  {step}")
    if result.slot == "current":
        print("start the agent (edgeloop-agent run) to serve it")
    return ExitCode.OK


def _feedback(ns: argparse.Namespace) -> int:
    import numpy as np

    from agent.config import AgentConfig
    from agent.inference.cli import SOCKET_ENV
    from agent.serving.feedback_client import send_feedback

    try:
        with np.load(ns.npz, allow_pickle=False) as data:
            x, y = data["x"], data["y"]
    except (OSError, ValueError, KeyError) as err:
        print(f"edgeloop-agent: cannot read x and y from {ns.npz}: {err}", file=sys.stderr)
        return ExitCode.USAGE
    socket = ns.socket or os.environ.get(SOCKET_ENV, "")
    if not socket:  # the socket the daemon listens on, from the same config it reads
        cfg = _config(ns)
        assert isinstance(cfg, AgentConfig)
        socket = str(cfg.inference_socket)
    target: Path | str = socket if ":" in socket and not socket.startswith("/") else Path(socket)
    try:
        summary = send_feedback(target, x, y, input_name=ns.input_name, batch_rows=ns.batch_rows)
    except InvalidInputError as err:
        print(f"edgeloop-agent: feedback refused: {err}", file=sys.stderr)
        return ExitCode.USAGE
    except InferenceError as err:
        print(f"edgeloop-agent: feedback failed: {err}", file=sys.stderr)
        return ExitCode.INFERENCE
    if ns.json:
        print(json.dumps(dataclasses.asdict(summary)))
        return ExitCode.OK
    print(f"stored {summary.accepted} labelled samples for {summary.model_name}@{summary.model_version}")
    print(f"{'batches':>24}: {summary.batches} (up to {ns.batch_rows} rows each)")
    print(f"{'features':>24}: {summary.feature_source}, {summary.feature_width} floats per sample")
    print(f"{'samples on device':>24}: {summary.stored_total} (after retention)")
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeloop-agent", description="edgeloop on-device agent")
    parser.add_argument("--config", "-c", default=os.environ.get("EDGELOOP_AGENT_CONFIG"), help="agent.toml")
    parser.add_argument("--log-level", default=os.environ.get("EDGELOOP_LOG_LEVEL", "INFO"))
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("enroll", help="enroll this device with a one-time bootstrap token")
    p.add_argument("--token", help="bootstrap token (or EDGELOOP_BOOTSTRAP_TOKEN)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_enroll)
    p = sub.add_parser("run", help="run the daemon (Sync, telemetry, reconcile)")
    p.set_defaults(func=_run)
    p = sub.add_parser("status", help="local status: enrollment, session, telemetry queue")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)
    p = sub.add_parser(
        "install",
        help="install a local model file into a slot (development; the agent must be stopped)",
        description=(
            "Verify (sha256), stage, load and warm up FILE, run the golden-set gate when --golden is "
            "given, then switch to it (--slot current) or leave it staged (--slot candidate). A refused "
            "model goes to broken/ with its reason. Logged like a release, and appended to "
            "<data>/ota/local_installs.jsonl."
        ),
    )
    p.add_argument("file", help="model file (.onnx or .tflite)")
    p.add_argument("--name", help="model name (default: the file name without suffix)")
    p.add_argument("--version", dest="model_version", help="model version (default: local-<name>)")
    p.add_argument("--slot", choices=("current", "candidate"), default="current")
    p.add_argument("--sha256", help="expected sha256 of FILE (hex); refused when it differs")
    p.add_argument(
        "--warmup", help="warm-up sample .npz (one array per input, named after it); default zeros"
    )
    p.add_argument("--golden", help="golden set .npz (input:<name> arrays and labels) for the accuracy gate")
    p.add_argument("--golden-threshold", type=float, default=0.0, help="minimum top-1 accuracy on --golden")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_install)
    from agent.inference.cli import add_subcommands

    add_subcommands(sub)  # predict, models: talk to the running agent's local inference API
    p = sub.add_parser("feedback", help="store labelled samples (.npz x, y) for on-device training")
    p.add_argument("--npz", required=True, type=Path, help=".npz with x (inputs, batch first) and y (labels)")
    p.add_argument("--input-name", default="", help="model input x binds to (default: the only input)")
    p.add_argument(
        "--socket",
        help="agent inference socket or host:port (default: EDGELOOP_INFERENCE_SOCKET, else the config's)",
    )
    p.add_argument("--batch-rows", type=int, default=256, help="rows per request (default 256)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_feedback)
    p = sub.add_parser("version")
    p.set_defaults(func=lambda ns: print(__version__) or ExitCode.OK)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(
        level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr
    )
    try:
        code: int = ns.func(ns)
    except ConfigError as err:
        print(f"edgeloop-agent: configuration error: {err}", file=sys.stderr)
        return ExitCode.CONFIG
    except EnrollmentError as err:
        print(f"edgeloop-agent: {err}", file=sys.stderr)
        return ExitCode.ENROLLMENT
    except DataDirLockedError as err:
        print(f"edgeloop-agent: refusing to start: {err}", file=sys.stderr)
        return ExitCode.DATA_DIR_LOCKED
    except StorageError as err:
        print(f"edgeloop-agent: {err}", file=sys.stderr)
        return ExitCode.STORAGE
    except TransportError as err:
        print(f"edgeloop-agent: {err}", file=sys.stderr)
        return ExitCode.TRANSPORT
    except AgentError as err:
        print(f"edgeloop-agent: {err}", file=sys.stderr)
        return ExitCode.USAGE
    except KeyboardInterrupt:
        return ExitCode.OK
    return code


if __name__ == "__main__":
    sys.exit(main())
