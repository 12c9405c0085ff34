"""Observability of the fleet server: Prometheus metrics, readiness, request ids, JSON logs.

`install(app)` (called by main.create_app before the console mount) adds the middleware
(middleware.py), the `/metrics` and `/readyz` routes (routes.py) and `app.state.observability`.
It needs nothing from the lifespan: the collector reads `app.state.engine/registry/writer` at
scrape time, and the middleware hooks the ingest writer's flush timing when the lifespan's
startup completes. Logging setup is `logs.configure_logging` (the CLI calls it); ids are bound
with `logs.log_context(device_id=...)`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import FastAPI

from fleet_server.observability.collectors import Sources
from fleet_server.observability.metrics import FleetMetrics
from fleet_server.observability.middleware import ObservabilityMiddleware
from fleet_server.observability.ready import Serving
from fleet_server.observability.routes import router

__all__ = ["Observability", "install"]


@dataclass(frozen=True)
class Observability:
    """`app.state.observability`."""

    metrics: FleetMetrics
    serving: Serving


def install(app: FastAPI) -> Observability:
    """Add metrics, readiness and request ids to `app` (before it starts serving)."""

    def sources() -> Sources | None:
        state = app.state
        if not all(hasattr(state, name) for name in ("engine", "registry", "writer")):
            return None
        return Sources(engine=state.engine, sessions=state.registry, ingest=state.writer)

    def on_startup() -> None:
        writer = getattr(app.state, "writer", None)
        if writer is not None and writer.on_flush is None:
            writer.on_flush = obs.metrics.observe_flush

    obs = Observability(metrics=FleetMetrics(sources), serving=Serving())
    app.state.observability = obs
    app.add_middleware(
        ObservabilityMiddleware, metrics=obs.metrics, serving=obs.serving, on_startup=on_startup
    )
    app.include_router(router)
    return obs
