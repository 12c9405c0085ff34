"""What the rollout engine needs from outside the rollouts package: OTA releases and metric windows.

Owns the two ports (`OtaPort`, `MetricsSource`) and `no_metrics`, the source with no data. Does not
implement them: `fleet_server.ota.releases.OtaService` is the OTA adapter and
`fleet_server.rollouts.metrics.device_window_sums` the metrics one (both wired in `wiring.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from sqlmodel import Session

from fleet_server.ota.models import OtaRelease, ReleaseCreate
from fleet_server.rollouts import judge


class OtaPort(Protocol):
    """What the engine needs of `fleet_server.ota.releases.OtaService`."""

    def publish_once(
        self, *, session: Session, spec: ReleaseCreate, created_by: str, idempotency_key: str
    ) -> tuple[OtaRelease, bool]: ...

    def deploy(
        self,
        *,
        session: Session,
        release_seq: int,
        device_ids: list[str],
        apply_windows: list[dict[str, Any]] | None = None,
    ) -> str: ...


class MetricsSource(Protocol):
    """`fleet_server.rollouts.metrics.device_window_sums`."""

    def __call__(
        self,
        conn_or_session: Any,
        device_ids: Sequence[str],
        since_ms: int,
        until_ms: int,
        model_sha256: str | None = None,
    ) -> Mapping[str, judge.WindowSums]: ...


def no_metrics(
    conn_or_session: Any,
    device_ids: Sequence[str],
    since_ms: int,
    until_ms: int,
    model_sha256: str | None = None,
) -> dict[str, judge.WindowSums]:
    """A `MetricsSource` with no data (metric gates wait, then follow `on_no_data`)."""
    return {}
