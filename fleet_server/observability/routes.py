"""`GET /metrics` (Prometheus text) and `GET /readyz` (readiness). No authentication, like
/healthz: the operator restricts them at the proxy. Thin: metrics.py and ready.py do the work."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from fleet_server.observability import ready
from fleet_server.observability.metrics import CONTENT_TYPE, FleetMetrics

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    name="metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text exposition"}},
)
def metrics(request: Request) -> Response:
    """Runs in the threadpool: the collector may query the database (cached ~2 s)."""
    fleet: FleetMetrics = request.app.state.observability.metrics
    return Response(content=fleet.render(), media_type=CONTENT_TYPE)


@router.get(
    "/readyz",
    name="readyz",
    responses={503: {"description": "not ready: `failing` names the checks that failed"}},
)
async def readyz(request: Request) -> JSONResponse:
    results = await ready.run_checks(_checks(request))
    failing = sorted(name for name, check in results.items() if not check.ok)
    body: dict[str, object] = {
        "ready": not failing,
        "checks": {name: {"ok": c.ok, "detail": c.detail} for name, c in results.items()},
    }
    if failing:
        body["failing"] = failing
    return JSONResponse(body, status_code=503 if failing else 200)


def _checks(request: Request) -> Mapping[str, ready.CheckFn]:
    state = request.app.state
    settings = state.settings
    engine = getattr(state, "engine", None)
    if engine is None:  # the lifespan has not built the server yet
        starting = ready.Check(False, "server starting")
        return dict.fromkeys(("database", "migrations", "keys", "artifacts", "grpc"), lambda: starting)
    ota = getattr(state, "ota", None)
    ota_uris = {role: rk.uris for role, rk in ota.repo.keys.roles.items()} if ota is not None else {}
    serving: ready.Serving = state.observability.serving
    ports: dict[str, int] = dict(getattr(state, "grpc_ports", {}))
    return {
        "database": lambda: ready.database(engine),
        "migrations": lambda: ready.migrations(engine),
        "keys": lambda: ready.keys(settings.data_dir, settings.pki_dir, ota_uris),
        "artifacts": lambda: (
            ready.artifacts(ota.store, ota.repo.metadata_key("timestamp.json"))
            if ota is not None
            else ready.Check(False, "OTA service not built")
        ),
        "grpc": lambda: ready.grpc_servers(serving, settings.grpc_host, ports),
    }
