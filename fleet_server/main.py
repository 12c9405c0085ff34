"""Composition root of the fleet server: `create_app(settings)`.

Builds the engine, runs migrations, loads the fleet CA, and starts the ingest writer, both
gRPC servers and (when `mqtt_url` is set) the MQTT bridge in the FastAPI lifespan, on the same
event loop as the REST API. Both device transports share one SessionRegistry (presence, desired
state pushes, kicks) and one IngestWriter. Errors map to HTTP
in one place (fleet_server.api.errors).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from starlette.middleware import Middleware

from fleet_server import __version__
from fleet_server.api.body_limit import BodyLimitMiddleware
from fleet_server.api.errors import COMMON, CONFLICT, NOT_FOUND, install_error_handlers
from fleet_server.api.routes import certs as certs_routes
from fleet_server.api.routes import devices, tokens
from fleet_server.audit.chain import Actor
from fleet_server.audit.middleware import AuditMiddleware
from fleet_server.audit.routes import router as audit_router
from fleet_server.audit.wiring import HeadSigner, build_audit
from fleet_server.certs.wiring import CertLifecycle, build_cert_lifecycle
from fleet_server.console.routes import mount_console
from fleet_server.coordination.fleet_sessions import FleetSessions, build_fleet_sessions
from fleet_server.coordination.replica import replica_id_for
from fleet_server.coordination.routes import router as replicas_router
from fleet_server.coordination.wiring import Coordination, build_coordination
from fleet_server.db import make_engine
from fleet_server.device_session import Renewer, certificate_renewer
from fleet_server.drift.observer import drift_observer
from fleet_server.drift.routes import router as drift_router
from fleet_server.federated.grid import FleetGrid
from fleet_server.federated.routes import router as federated_router
from fleet_server.federated.wiring import FederatedRuntime, build_federated
from fleet_server.fleetview import build_fleet_events, fleetview_columns_observer
from fleet_server.fleetview import router as fleetview_router
from fleet_server.grpc_api.server import GrpcServers, build_grpc_servers
from fleet_server.grpc_api.servicer import DeviceServicer, SessionRegistry
from fleet_server.ingest import IngestWriter
from fleet_server.migrate import upgrade
from fleet_server.mqtt.bridge import MqttBridge
from fleet_server.mqtt.devices import MqttDevices
from fleet_server.observability.wiring import install as install_observability
from fleet_server.ota.access import refresh_tokens
from fleet_server.ota.routes import mount_ota
from fleet_server.ota.signer import coordinate
from fleet_server.ota.status import ota_status_observer
from fleet_server.pki import FleetCA
from fleet_server.registry.routes import router as registry_router
from fleet_server.registry.wiring import build_registry
from fleet_server.rollouts.metrics import model_metrics_observer
from fleet_server.rollouts.routes import router as rollouts_router
from fleet_server.rollouts.wiring import build_rollouts, poke_on_ota_reports
from fleet_server.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limit_blas_threads(settings.blas_threads)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.resolved_database_url())
        await asyncio.to_thread(upgrade, engine)
        coordination = await _start_coordination(app, engine, settings)  # first up, last down
        ca = FleetCA.load(settings.pki_dir)
        audit = await asyncio.to_thread(  # timed head signing on the audit-head-signer lease holder
            build_audit, engine=engine, data_dir=settings.data_dir, leases=coordination.leases,
            holder=coordination.replica_id, lease_ttl_s=settings.lease_ttl_s,
        )  # fmt: skip
        app.state.audit = audit.log
        await asyncio.to_thread(audit.log.record, Actor.system("fleet-server"), "server.start")
        await asyncio.to_thread(app.state.ota.use_audit, audit.log)  # OtaService: built by mount_ota
        ota_signer = await asyncio.to_thread(  # tuf-signer lease duty, PostgreSQL writer lock: ota/signer.py
            coordinate, app.state.ota, engine, ttl_s=settings.lease_ttl_s,
            holder=coordination.replica_id,
        )  # fmt: skip
        # Renewal promotion, revocation (CRL, session kicks, broker takeover): certs/wiring.py.
        certs = build_cert_lifecycle(  # the daily CRL refresh on the crl-refresh lease holder only
            engine=engine, ca=ca, settings=settings, audit=audit.log, leases=coordination.leases,
            holder=coordination.replica_id,
        )  # fmt: skip
        writer = IngestWriter(
            engine,
            max_rows=settings.flush_max_rows,
            linger_s=settings.flush_interval_ms / 1000 / 10,
            observers=[
                ota_status_observer,
                drift_observer,
                model_metrics_observer,
                poke_on_ota_reports(lambda: getattr(app.state, "rollouts", None)),
            ],
            # Reports, in the flush transaction (ingest.ReportObserver): a renewed certificate the
            # device reports in use becomes its current one (certs/renewal.py).
            report_observers=[certs.promotion_observer, fleetview_columns_observer],
        )
        registry = _session_registry(certs, app=app, engine=engine, settings=settings)  # presence, fan-out
        renew = certificate_renewer(engine, ca, days=settings.device_cert_days)  # SyncRequest.renew
        servicer = DeviceServicer(
            engine=engine, ca=ca, settings=settings, writer=writer, registry=registry, renew=renew
        )
        federated = build_federated(
            engine=engine, loop=asyncio.get_running_loop(), data_dir=settings.data_dir, audit=audit.log,
            replica_id=coordination.replica_id,
            models=lambda: app.state.models, blobs=app.state.ota.blob_bytes,
            lease_ttl_s=settings.lease_ttl_s,
            replica_ttl_s=settings.replica_ttl_s, bus=coordination.bus, leases=coordination.leases,
        )  # fmt: skip
        servers = build_grpc_servers(
            settings=settings, ca=ca, servicer=servicer, device_handlers=[federated.servicer.handlers()]
        )
        app.state.federated = federated
        app.state.rollouts = build_rollouts(
            engine=engine, ota=app.state.ota, audit=audit.log, settings=settings,
            notify=registry.notify_desired_changed,
        )  # fmt: skip
        app.state.models = build_registry(
            engine=engine,
            ota=app.state.ota,
            settings=settings,
            runner=federated.runner,
            notify=registry.notify_desired_changed,
            audit=audit.log,
            rollouts=app.state.rollouts,
            replica_id=coordination.replica_id,  # registry-compile lease
        )
        app.state.engine, app.state.registry, app.state.writer = engine, registry, writer
        app.state.fleet_events = build_fleet_events(engine=engine, registry=registry)
        app.state.revoker = certs.revoker  # POST /devices/{id}/revoke (api/routes/certs.py)
        app.state.grpc_ports = {"enroll": servers.enroll_port, "device": servers.device_port}
        await writer.start()
        await servers.start()
        app.state.mqtt = bridge = await _start_mqtt(
            settings, engine=engine, writer=writer, registry=registry, grid=federated.grid, renew=renew
        )
        app.state.rollouts.start()
        federated.start()  # runner and drift-trigger leases, task relay (federated/wiring.py)
        logger.info(
            "fleet server started http=%s:%s enroll_port=%s device_port=%s transports=%s mqtt=%s db=%s",
            settings.http_host,
            settings.http_port,
            servers.enroll_port,
            servers.device_port,
            "grpc+mqtt" if bridge is not None else "grpc",
            bridge.endpoint if bridge is not None else "off",
            engine.url.render_as_string(hide_password=True),
        )
        refresh = asyncio.create_task(  # OTA tokens in DesiredState, re-sent at half their lifetime
            refresh_tokens(
                online=_token_refresh_targets(app), push=registry.push_desired, ttl_s=settings.ota_token_ttl_s
            )
        )
        try:
            yield
        finally:
            refresh.cancel()
            certs.stop()
            await asyncio.to_thread(ota_signer.stop)
            await _stop(app, federated=federated, bridge=bridge, servers=servers, audit=audit)
            await asyncio.to_thread(coordination.stop)  # last: bus, then this replica's rows
            engine.dispose()
            logger.info("fleet server stopped")

    # AuditMiddleware records operator writes into app.state.audit (built in the lifespan above).
    app = FastAPI(
        title="edgeloop fleet server", version=__version__, lifespan=lifespan,
        middleware=[
            Middleware(AuditMiddleware),
            Middleware(BodyLimitMiddleware, max_bytes=settings.max_request_body_bytes),
        ],
    )  # fmt: skip
    app.state.settings = settings

    install_error_handlers(app)

    _include_routers(app, settings)
    install_observability(app)  # /metrics, /readyz, X-Request-Id, REST latency histogram
    return mount_console(app)


async def _stop(
    app: FastAPI,
    *,
    federated: FederatedRuntime,
    bridge: MqttBridge | None,
    servers: GrpcServers,
    audit: HeadSigner,
) -> None:
    """Stop what the lifespan started, newest first: event streams, engines, transports, writer."""
    await app.state.fleet_events.close()
    await asyncio.to_thread(app.state.rollouts.stop)
    federated.shutdown()
    app.state.models.stop()
    if bridge is not None:
        await bridge.stop()  # unacked messages stay with the broker's session
    await servers.stop()
    if app.state.fleet_sessions is not None:  # before the heartbeat's stop deletes our presence rows
        await asyncio.to_thread(app.state.fleet_sessions.stop)
    await app.state.writer.stop()
    await asyncio.to_thread(_stop_audit, audit)


def limit_blas_threads(threads: int) -> None:
    """Cap the BLAS libraries loaded in this process at `threads` (0: leave them as they are)."""
    if threads <= 0:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")  # process-wide, for the server's lifetime
    logger.info("blas threads limited to %d", threads)


def _healthz(request: Request) -> JSONResponse:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError:
        return JSONResponse(status_code=503, content={"status": "degraded", "database": "unavailable"})
    writer: IngestWriter = request.app.state.writer
    mqtt: MqttBridge | None = getattr(request.app.state, "mqtt", None)
    return JSONResponse(
        {
            "status": "ok",
            "version": __version__,
            "devices_online": len(request.app.state.registry.online()),  # fleet-wide
            "devices_served": len(request.app.state.registry.local()),  # by this replica
            "grpc_ports": request.app.state.grpc_ports,
            "ingest": vars(writer.stats),
            **({"mqtt": vars(mqtt.handler.stats)} if mqtt is not None and mqtt.handler else {}),
            **_fleet_sessions_health(request.app.state.fleet_sessions),
        }
    )


def _fleet_sessions_health(fleet: FleetSessions | None) -> dict[str, object]:
    """Presence writes and bus fan-out counters, with replicas (coordination/fleet_sessions.py)."""
    if fleet is None:
        return {}
    return {"presence": vars(fleet.presence.stats), "fanout": vars(fleet.fanout.stats)}


def _include_routers(app: FastAPI, settings: Settings) -> None:
    app.get(
        "/healthz",
        tags=["health"],
        name="healthz",
        responses={503: {"description": "degraded: database unavailable"}},
    )(_healthz)
    api = APIRouter(prefix="/api/v1", responses=COMMON)
    api.include_router(devices.router)
    api.include_router(certs_routes.router)  # POST /devices/{id}/revoke
    api.include_router(tokens.router)
    api.include_router(drift_router)
    api.include_router(federated_router, responses=NOT_FOUND | CONFLICT)
    api.include_router(registry_router)
    api.include_router(audit_router)
    api.include_router(rollouts_router)
    api.include_router(fleetview_router)  # /me, /fleet/*, /devices/{id}/series, /events
    api.include_router(replicas_router)  # /replicas: replicas alive, singleton lease holders
    mount_ota(app, api, settings)
    app.include_router(api)


def _token_refresh_targets(app: FastAPI) -> Callable[[], set[str]]:
    """This replica's devices (one process: all of them); with replicas, its gRPC streams plus,
    on the `mqtt-token-refresh` lease holder, every MQTT device (coordination/fleet_sessions.py)."""
    fleet = app.state.fleet_sessions
    return app.state.registry.local if fleet is None else fleet.token_refresh_targets  # type: ignore[no-any-return]


def _session_registry(
    certs: CertLifecycle, *, app: FastAPI, engine: Engine, settings: Settings
) -> SessionRegistry:
    """Who is online over gRPC and MQTT, on every replica (presence in PostgreSQL); desired-state
    changes and kicks fanned out to the other replicas (coordination/fleet_sessions.py; nothing of
    it on SQLite); a revocation kicks the device off both transports. Starts the certificate
    lifecycle (CRL refresh) on the serving loop; `certs.stop()` at shutdown."""
    replica_id = getattr(app.state, "replica_id", "") or replica_id_for(settings)
    leases = app.state.coordination.leases if hasattr(app.state, "coordination") else None
    bus = app.state.coordination.bus if hasattr(app.state, "coordination") else None  # one LISTEN connection
    fleet = build_fleet_sessions(engine, settings, replica_id, leases=leases, bus=bus)
    app.state.fleet_sessions = fleet
    if fleet is None:
        registry = SessionRegistry()
    else:
        registry = SessionRegistry(presence=fleet.presence, fanout=fleet.fanout)
        fleet.attach(registry)
        fleet.start()
    registry.bind_loop(asyncio.get_running_loop())
    certs.add_kicker(registry)  # registry.kick fans out to the MQTT bridge (MqttDevices.kick)
    certs.start()
    return registry


async def _start_mqtt(
    settings: Settings,
    *,
    engine: Engine,
    writer: IngestWriter,
    registry: SessionRegistry,
    grid: FleetGrid,
    renew: Renewer,
) -> MqttBridge | None:
    """The MQTT transport, when `mqtt_url` is set: same ingest, registry and session logic as gRPC."""
    if not settings.mqtt_url:
        return None
    bridge = MqttBridge(settings)
    handler = MqttDevices(
        engine=engine, settings=settings, writer=writer, registry=registry, publisher=bridge, grid=grid,
        renew=renew,
    )  # fmt: skip
    await handler.start()
    await bridge.start(handler)
    return bridge


async def _start_coordination(app: FastAPI, engine: Engine, settings: Settings) -> Coordination:
    """This replica's id, lease store, bus and heartbeat (`app.state.coordination`), started."""
    coordination = build_coordination(engine, settings)
    app.state.coordination, app.state.replica_id = coordination, coordination.replica_id
    await asyncio.to_thread(coordination.start)
    return coordination


def _stop_audit(audit: HeadSigner) -> None:
    """Record the stop and sign the head before the engine goes away."""
    try:
        audit.log.record(Actor.system("fleet-server"), "server.stop")
    except SQLAlchemyError as err:
        logger.error("audit: server.stop not recorded: %s", err)
    audit.stop()
