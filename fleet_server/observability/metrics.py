"""The server's Prometheus metrics: one `FleetMetrics` (and one CollectorRegistry) per app.

Owns the metrics observed as things happen (REST latency by route template, ingest flush
duration) and the exposition (`render`). The gauges read at scrape time (devices, sessions,
rollouts, federated runs, ingest counters) come from collectors.FleetCollector. Never the
process-global prometheus registry: tests build many apps in one process, and each app's
numbers must be its own.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from fleet_server.observability.collectors import FleetCollector, FleetSources

CONTENT_TYPE = CONTENT_TYPE_LATEST
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FLUSH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class FleetMetrics:
    """Per-app metrics. `sources` is read at scrape time (None until the lifespan has built the
    engine, the session registry and the ingest writer)."""

    def __init__(self, sources: FleetSources, *, cache_s: float = 2.0) -> None:
        self.registry = CollectorRegistry()  # FleetCollector.describe: no DB query at register
        self.http_latency = Histogram(
            "edgeloop_http_request_duration_seconds",
            "REST request duration, by method, route template and status class (2xx, 4xx, ...)",
            ["method", "route", "status"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.flush_latency = Histogram(
            "edgeloop_ingest_flush_seconds",
            "Duration of one group-commit flush of the ingest writer (its transaction and retries)",
            buckets=FLUSH_BUCKETS,
            registry=self.registry,
        )
        self.collector = FleetCollector(sources, cache_s=cache_s)
        self.registry.register(self.collector)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "OTHER"
        self.http_latency.labels(method, route, f"{status // 100}xx").observe(seconds)

    def observe_flush(self, seconds: float, rows: int) -> None:
        """The ingest writer's flush hook (ingest.FlushHook); `rows` is counted by the collector."""
        self.flush_latency.observe(seconds)

    def render(self) -> bytes:
        """The exposition text (blocking: the collector may query the database; call off the loop)."""
        return generate_latest(self.registry)
