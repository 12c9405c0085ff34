"""`edgeloop-server`: init | migrate | run | operator-token | mqtt-config. Parses, calls one function,
maps errors."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fleet_server.errors import ExitCode, FleetError

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from fleet_server.settings import Settings

logger = logging.getLogger("fleet_server")


def _settings(ns: argparse.Namespace) -> object:
    from fleet_server.settings import Settings

    overrides: dict[str, object] = {}
    for key in (
        "data_dir",
        "database_url",
        "http_host",
        "http_port",
        "grpc_host",
        "enroll_port",
        "device_port",
    ):
        value = getattr(ns, key, None)
        if value is not None:
            overrides[key] = value
    return Settings(**overrides)  # type: ignore[arg-type]


def _init(ns: argparse.Namespace) -> int:
    from fleet_server.crud.tokens import create_operator_token
    from fleet_server.db import make_engine, session_scope
    from fleet_server.migrate import upgrade
    from fleet_server.pki import FleetCA
    from fleet_server.security import Role
    from fleet_server.settings import Settings

    settings = _settings(ns)
    assert isinstance(settings, Settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ca = FleetCA.create(settings.pki_dir)
    ca.ensure_server_certificate(settings.public_hostnames)
    engine = make_engine(settings.resolved_database_url())
    upgrade(engine)
    _create_signing_keys(settings, engine)
    with session_scope(engine) as session:
        _, token = create_operator_token(session=session, name="admin", role=Role.ADMIN)
    if ns.token_file:
        path = Path(ns.token_file)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
    out = {"data_dir": str(settings.data_dir), "ca": str(settings.pki_dir / "ca.pem"), "admin_token": token}
    if ns.json:
        print(json.dumps(out))
    else:
        print(f"fleet CA:     {out['ca']}\nadmin token:  {token}\n(shown once; store it safely)")
    return ExitCode.OK


def _create_signing_keys(settings: Settings, engine: Engine) -> None:
    """Every key a replica needs, made now rather than at the first start, so an operator can turn
    the data dir into Secrets before running any replica: the OTA keys and the signed repository
    (in the configured artifact store), the audit head key and the OTA access secret. A store that
    already holds a repository made with other keys is refused (KeyConfigError), never forked."""
    from fleet_server.artifacts.factory import store_from_settings
    from fleet_server.audit.keys import AuditKey
    from fleet_server.audit.store import SqlAuditLog
    from fleet_server.audit.wiring import key_path
    from fleet_server.ota.access import access_for
    from fleet_server.ota.releases import OtaService

    log = SqlAuditLog(engine, AuditKey.load_or_create(key_path(settings.data_dir)))
    ota = OtaService(settings.data_dir / "ota", store=store_from_settings(settings))
    ota.use_audit(log)  # records the OTA keys it generated
    access_for(settings.data_dir / "ota", settings.ota_token_ttl_s)


def _migrate(ns: argparse.Namespace) -> int:
    from fleet_server.db import make_engine
    from fleet_server.migrate import upgrade
    from fleet_server.settings import Settings

    settings = _settings(ns)
    assert isinstance(settings, Settings)
    print(f"schema at revision {upgrade(make_engine(settings.resolved_database_url()))}")
    return ExitCode.OK


def _run(ns: argparse.Namespace) -> int:
    import asyncio
    import contextlib
    import signal
    import socket
    from collections.abc import Iterator

    import uvicorn

    from fleet_server.main import create_app
    from fleet_server.settings import Settings

    settings = _settings(ns)
    assert isinstance(settings, Settings)
    app = create_app(settings)

    class _Server(uvicorn.Server):
        # uvicorn re-raises SIGTERM after a graceful shutdown (exit -15); a service manager
        # should see exit 0 for a clean stop, so we handle the signals ourselves.
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: setattr(self, "should_exit", True))
            yield

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            hub = getattr(app.state, "fleet_events", None)
            if hub is not None:
                await hub.close()  # end SSE streams before uvicorn waits for open responses
            await super().shutdown(sockets)

    config = uvicorn.Config(
        app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False
    )
    asyncio.run(_Server(config).serve())
    return ExitCode.OK


def _operator_token(ns: argparse.Namespace) -> int:
    from fleet_server.crud.tokens import create_operator_token
    from fleet_server.db import make_engine, session_scope
    from fleet_server.security import Role
    from fleet_server.settings import Settings

    settings = _settings(ns)
    assert isinstance(settings, Settings)
    with session_scope(make_engine(settings.resolved_database_url())) as session:
        row, token = create_operator_token(session=session, name=ns.name, role=Role(ns.role))
    print(
        json.dumps({"id": row.id, "name": row.name, "role": row.role, "token": token}) if ns.json else token
    )
    return ExitCode.OK


def _mqtt_config(ns: argparse.Namespace) -> int:
    from fleet_server.certs.crl import revoked_serials
    from fleet_server.db import make_engine
    from fleet_server.mqtt.brokerconf import BrokerOptions, write_broker_config
    from fleet_server.pki import FleetCA
    from fleet_server.settings import Settings

    settings = _settings(ns)
    assert isinstance(settings, Settings)
    ca = FleetCA.load(settings.pki_dir)
    engine = make_engine(settings.resolved_database_url())
    try:
        crl = ca.build_crl(revoked_serials(engine))
    finally:
        engine.dispose()
    defaults = BrokerOptions()
    options = BrokerOptions(
        port=ns.port,
        bind=ns.bind,
        hostnames=ns.host or defaults.hostnames,
        peak_msgs_per_s=ns.peak_msgs_per_s,
        stall_s=ns.stall_s,
        max_queued_bytes=ns.max_queued_bytes,
        message_size_limit=settings.max_message_bytes,
        run_as=ns.run_as,
    )
    files = write_broker_config(ca, Path(ns.out), options, crl_pem=crl)
    if ns.json:
        print(json.dumps(files.as_dict()))
    else:
        print(f"wrote {files.config}; run: mosquitto -c {files.config}")
        print(f"server MQTT identity: {files.server_cert} / {files.server_key}; CRL: {files.crl}")
    return ExitCode.OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgeloop-server", description="edgeloop fleet server")
    parser.add_argument("--log-level", default=os.environ.get("EDGELOOP_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--log-format",
        default=os.environ.get("EDGELOOP_LOG_FORMAT", "text"),
        help="text, or json: one JSON object per line with ts, level, logger, msg and the request, "
        "device, rollout and deployment ids in context (env EDGELOOP_LOG_FORMAT)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", dest="data_dir", type=Path)
        p.add_argument("--database-url", dest="database_url")
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("init", help="create the fleet CA, the schema and the first admin token")
    common(p)
    p.add_argument("--token-file", help="also write the admin token to this file (0600)")
    p.set_defaults(func=_init)
    p = sub.add_parser("migrate", help="upgrade the database schema to the newest revision")
    common(p)
    p.set_defaults(func=_migrate)
    p = sub.add_parser("run", help="serve REST, enrollment and Sync")
    common(p)
    p.add_argument("--http-host", dest="http_host")
    p.add_argument("--http-port", dest="http_port", type=int)
    p.add_argument("--grpc-host", dest="grpc_host")
    p.add_argument("--enroll-port", dest="enroll_port", type=int)
    p.add_argument("--device-port", dest="device_port", type=int)
    p.set_defaults(func=_run)
    p = sub.add_parser("operator-token", help="mint an operator token directly in the database")
    common(p)
    p.add_argument("--name", required=True)
    p.add_argument("--role", choices=["viewer", "operator", "admin"], default="viewer")
    p.set_defaults(func=_operator_token)
    p = sub.add_parser(
        "mqtt-config", help="write the Mosquitto config, ACL, certificates and CRL for the fleet"
    )
    common(p)
    p.add_argument("--out", required=True, help="directory for mosquitto.conf and its files")
    p.add_argument("--port", type=int, default=8883)
    p.add_argument("--bind", default="", help="listen address (default: all interfaces)")
    p.add_argument("--host", action="append", help="broker name devices connect to (repeat; SAN)")
    p.add_argument("--run-as", dest="run_as", default="mosquitto", help="user mosquitto drops to")
    p.add_argument("--peak-msgs-per-s", dest="peak_msgs_per_s", type=int, default=20_000)
    p.add_argument("--stall-s", dest="stall_s", type=int, default=120, help="server stall to ride out")
    p.add_argument("--max-queued-bytes", dest="max_queued_bytes", type=int, default=1 << 30)
    p.set_defaults(func=_mqtt_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    from fleet_server.observability.logs import configure_logging

    try:
        configure_logging(level=ns.log_level, fmt=ns.log_format.strip().lower(), stream=sys.stderr)
    except ValueError as err:
        print(f"edgeloop-server: {err}", file=sys.stderr)
        return ExitCode.CONFIG
    try:
        code: int = ns.func(ns)
    except FleetError as err:
        print(f"edgeloop-server: {err}", file=sys.stderr)
        from fleet_server.errors import ConfigError

        return ExitCode.CONFIG if isinstance(err, ConfigError) else ExitCode.DATABASE
    except KeyboardInterrupt:
        return ExitCode.OK
    return code


if __name__ == "__main__":
    sys.exit(main())
