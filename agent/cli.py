"""`edgeloop-agent`: enroll | run | status | version. Parses, loads config, calls one function."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from agent import __version__
from agent.errors import AgentError, ConfigError, EnrollmentError, ExitCode, StorageError, TransportError


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
    device_id = asyncio.run(enroll_device(cfg, token))
    print(json.dumps({"device_id": device_id, "enrolled": True}) if ns.json else f"enrolled as {device_id}")
    return ExitCode.OK


def _run(ns: argparse.Namespace) -> int:
    from agent.config import AgentConfig
    from agent.daemon import run_daemon
    from agent.identity import IdentityStore

    cfg = _config(ns)
    assert isinstance(cfg, AgentConfig)
    if not IdentityStore(cfg.data_path).is_enrolled():
        print("edgeloop-agent: not enrolled; run `edgeloop-agent enroll --token ...` first", file=sys.stderr)
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
    from agent.inference.cli import add_subcommands

    add_subcommands(sub)  # predict, models: talk to the running agent's local inference API
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
