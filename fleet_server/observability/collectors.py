"""Scrape-time gauges of the fleet: devices, sessions, ingest, rollouts, federated learning.

`FleetCollector` is a prometheus_client custom collector. In-memory readings (who is online on
which transport fleet-wide, from the registry's presence snapshot; the Sync streams and devices
this replica serves; ingest queue and counters) are taken at every scrape; the database readings
(a handful of GROUP BY counts, one connection) are cached for `cache_s`, and device profiles for
online devices come from a cache that looks up only ids it has not seen, so a scrape costs a few
milliseconds whatever the fleet size. Label values are bounded: at most
MAX_PROFILES profiles are named, the rest are counted under "(other)".

Does not own the metrics observed as things happen (metrics.py) or any HTTP route.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import SQLModel

from fleet_server.federated.lifecycle import RunStatus
from fleet_server.federated.models import FlRound, FlRun
from fleet_server.models import Device
from fleet_server.rollouts.models import Rollout
from fleet_server.rollouts.states import RolloutState

if TYPE_CHECKING:
    from fleet_server.ingest import IngestStats

logger = logging.getLogger(__name__)

MAX_PROFILES = 64
OTHER = "(other)"
NO_PROFILE = "none"
UNKNOWN = "unknown"  # online, but not (or no longer) in the database
PROFILE_CACHE_S = 900.0  # profiles change only at (re-)enrollment; forgotten now and then anyway
_LOOKUP_CHUNK = 500

_device = SQLModel.metadata.tables[Device.__tablename__]
_rollout = SQLModel.metadata.tables[Rollout.__tablename__]
_run = SQLModel.metadata.tables[FlRun.__tablename__]
_round = SQLModel.metadata.tables[FlRound.__tablename__]


class SessionView(Protocol):
    """grpc_api.sessions.SessionRegistry as seen by the collector."""

    def online(self) -> set[str]: ...  # fleet-wide (every replica)

    def local(self) -> set[str]: ...  # served by this replica

    def get(self, device_id: str, /) -> object | None: ...  # a gRPC Sync session here, else None

    def transport(self, device_id: str, /) -> str | None: ...  # "grpc" | "mqtt", fleet-wide


class IngestView(Protocol):
    """ingest.IngestWriter as seen by the collector."""

    stats: IngestStats

    @property
    def queue_depth(self) -> int: ...


@dataclass(frozen=True)
class Sources:
    engine: Engine
    sessions: SessionView
    ingest: IngestView


FleetSources = Callable[[], Sources | None]
"""Returns the running server's parts, or None before the lifespan has built them."""


@dataclass
class DbSnapshot:
    devices_by_profile: dict[str, int] = field(default_factory=dict)
    rollouts_by_state: dict[str, int] = field(default_factory=dict)
    runs_by_state: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    ok: bool = False
    taken_at: float = float("-inf")


def read_snapshot(conn: Connection) -> DbSnapshot:
    """The database gauges: four GROUP BY/COUNT queries on one connection."""
    devices = conn.execute(
        select(_device.c.profile, func.count())
        .where(_device.c.status != "revoked")
        .group_by(_device.c.profile)
    ).all()
    rollouts = conn.execute(select(_rollout.c.state, func.count()).group_by(_rollout.c.state)).all()
    runs = conn.execute(select(_run.c.status, func.count()).group_by(_run.c.status)).all()
    rounds = conn.execute(select(func.count()).select_from(_round)).scalar_one()
    return DbSnapshot(
        devices_by_profile=_bounded({_profile(p): int(n) for p, n in devices}),
        rollouts_by_state={str(s): int(n) for s, n in rollouts},
        runs_by_state={str(s): int(n) for s, n in runs},
        rounds=int(rounds),
        ok=True,
    )


class ProfileCache:
    """device id -> profile label, for the online devices; looks up only the ids it lacks."""

    def __init__(self, max_age_s: float = PROFILE_CACHE_S, clock: Callable[[], float] = time.monotonic):
        self._map: dict[str, str] = {}
        self._max_age_s = max_age_s
        self._clock = clock
        self._since = clock()

    def lookup(self, engine: Engine, ids: set[str]) -> Mapping[str, str]:
        """A mapping holding the profile of every id of `ids` the database knows (and maybe
        more ids: read it with `.get`). Raises: SQLAlchemyError."""
        if self._clock() - self._since > self._max_age_s:
            self._map, self._since = {}, self._clock()
        missing = ids - self._map.keys()
        if missing:
            with engine.connect() as conn:
                if len(missing) > 4 * _LOOKUP_CHUNK:  # a cold cache on a big fleet: one full read
                    rows = conn.execute(select(_device.c.id, _device.c.profile)).all()
                else:
                    ordered = sorted(missing)
                    rows = [
                        row
                        for i in range(0, len(ordered), _LOOKUP_CHUNK)
                        for row in conn.execute(
                            select(_device.c.id, _device.c.profile).where(
                                _device.c.id.in_(ordered[i : i + _LOOKUP_CHUNK])
                            )
                        ).all()
                    ]
            self._map.update((str(i), _profile(p)) for i, p in rows)
        return self._map


class FleetCollector(Collector):
    """The scrape-time gauges; thread-safe (scrapes may overlap)."""

    def __init__(
        self, sources: FleetSources, *, cache_s: float = 2.0, clock: Callable[[], float] = time.monotonic
    ):
        self._sources = sources
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._snapshot = DbSnapshot()
        self._profiles = ProfileCache(clock=clock)

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known at collect time; never query the database to register

    def collect(self) -> Iterator[Metric]:
        src = self._sources()
        if src is None:
            return
        online, local = src.sessions.online(), src.sessions.local()
        with self._lock:
            snapshot = self._refresh(src.engine)
            try:
                profiles = self._profiles.lookup(src.engine, online)
            except SQLAlchemyError as err:
                logger.warning("metrics: device profiles not read: %s", type(err).__name__)
                profiles = {}
            transport, profile = src.sessions.transport, profiles.get
            keys = [(_transport(transport(d)), profile(d, UNKNOWN)) for d in online]
        streams = sum(1 for d in local if src.sessions.get(d) is not None)
        yield from _session_metrics(Counter(keys), streams=streams, local=len(local))
        yield from _ingest_metrics(src.ingest)
        yield from _db_metrics(snapshot)

    def _refresh(self, engine: Engine) -> DbSnapshot:
        now = self._clock()
        if now - self._snapshot.taken_at < self._cache_s:
            return self._snapshot
        try:
            with engine.connect() as conn:
                fresh = read_snapshot(conn)
        except SQLAlchemyError as err:
            logger.warning("metrics: database gauges not read: %s", type(err).__name__)
            fresh = DbSnapshot(
                self._snapshot.devices_by_profile,
                self._snapshot.rollouts_by_state,
                self._snapshot.runs_by_state,
                self._snapshot.rounds,
                ok=False,
            )
        fresh.taken_at = now
        self._snapshot = fresh
        return fresh


def _transport(value: str | None) -> str:
    return "grpc" if value == "grpc" else "mqtt"


def _session_metrics(
    by_transport_profile: Counter[tuple[str, str]], *, streams: int, local: int
) -> Iterator[Metric]:
    per_profile: Counter[str] = Counter()
    for (_, profile), n in by_transport_profile.items():
        per_profile[profile] += n
    named = set(_bounded(dict(per_profile))) - {OTHER}
    g = GaugeMetricFamily(
        "edgeloop_devices_online",
        "Devices with a live session on any replica, by transport (grpc, mqtt) and profile"
        " (fleet-wide: every replica reports the same; aggregate with max, not sum)",
        labels=["transport", "profile"],
    )
    folded: Counter[tuple[str, str]] = Counter()
    for (transport, profile), n in by_transport_profile.items():
        folded[(transport, profile if profile in named else OTHER)] += n
    for transport in ("grpc", "mqtt"):
        if not any(t == transport for t, _ in folded):
            g.add_metric([transport, NO_PROFILE], 0)
    for (transport, profile), n in sorted(folded.items()):
        g.add_metric([transport, profile], n)
    yield g
    yield GaugeMetricFamily("edgeloop_sync_streams", "Open gRPC Sync streams on this replica", value=streams)
    yield GaugeMetricFamily(
        "edgeloop_devices_served",
        "Devices this replica serves: its gRPC streams and the MQTT devices whose status it received",
        value=local,
    )


def _ingest_metrics(ingest: IngestView) -> Iterator[Metric]:
    s = ingest.stats
    yield GaugeMetricFamily(
        "edgeloop_ingest_queue_depth",
        "Rows (reports and telemetry records) submitted to the ingest writer, not yet in a flush",
        value=ingest.queue_depth,
    )
    yield CounterMetricFamily(
        "edgeloop_telemetry_records",
        "Telemetry records committed by the ingest writer",
        value=s.telemetry_rows,
    )
    yield CounterMetricFamily(
        "edgeloop_reports", "Device reports committed by the ingest writer", value=s.reports
    )
    yield CounterMetricFamily(
        "edgeloop_ingest_rejected_records",
        "Records refused before batching (malformed, out of range, too large)",
        value=s.rejected_records,
    )
    yield CounterMetricFamily(
        "edgeloop_ingest_flush_errors", "Ingest flushes that failed in part or whole", value=s.errors
    )


def _db_metrics(snap: DbSnapshot) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "edgeloop_metrics_database_up",
        "1 if the last read of the database gauges succeeded (they keep their last values otherwise)",
        value=1 if snap.ok else 0,
    )
    devices = GaugeMetricFamily(
        "edgeloop_devices_total", "Enrolled devices (not revoked), by profile", labels=["profile"]
    )
    for profile, n in sorted(snap.devices_by_profile.items()):
        devices.add_metric([profile], n)
    yield devices
    rollouts = GaugeMetricFamily("edgeloop_rollouts", "Rollouts by state", labels=["state"])
    for state, n in sorted(_with_zeros(RolloutState, snap.rollouts_by_state).items()):
        rollouts.add_metric([str(state)], n)
    yield rollouts
    runs = GaugeMetricFamily("edgeloop_federated_runs", "Federated learning runs by state", labels=["state"])
    for state, n in sorted(_with_zeros(RunStatus, snap.runs_by_state).items()):
        runs.add_metric([str(state)], n)
    yield runs
    yield CounterMetricFamily(
        "edgeloop_federated_rounds", "Federated learning rounds completed (all runs)", value=snap.rounds
    )


def _with_zeros(states: Iterable[str], counts: dict[str, int]) -> dict[str, int]:
    """Every known state (0 when absent, so dashboards see it), plus any other state found."""
    return {**{str(s): 0 for s in states}, **counts}


def _profile(value: object) -> str:
    return str(value) if value else NO_PROFILE


def _bounded(counts: dict[str, int]) -> dict[str, int]:
    """At most MAX_PROFILES label values (the largest); the rest summed under OTHER."""
    if len(counts) <= MAX_PROFILES:
        return dict(counts)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    out = dict(ranked[: MAX_PROFILES - 1])
    out[OTHER] = sum(n for _, n in ranked[MAX_PROFILES - 1 :])
    return out
