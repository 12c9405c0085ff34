"""One look at a batch's metric gates, and the gate results kept for every look.

Owns reading the canary (the batch's committed devices, on the new models) and control (matching
devices still on the previous model) metric windows through the `MetricsSource` port over the same
window, waiting until enough canary devices reported, calling `judge.evaluate` with the batch's
sequential-test state, and storing each `GateResult` as a `RolloutGateResult` row.

Does not choose the control cohort or turn a verdict into an event (`deciding.py`), and does no
statistics itself (`judge.py`, `gates.py`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm.attributes import flag_modified
from sqlmodel import Session, select

from fleet_server.rollouts import judge
from fleet_server.rollouts.gates import GateResult, Verdict
from fleet_server.rollouts.models import (
    DEVICE_COMMITTED,
    Rollout,
    RolloutBatch,
    RolloutDevice,
    RolloutGateResult,
)
from fleet_server.rollouts.ports import MetricsSource
from fleet_server.rollouts.rows import ms
from fleet_server.rollouts.schemas import GateConfig


def metric_gates(
    s: Session,
    row: Rollout,
    batch: RolloutBatch,
    cfg: GateConfig,
    now: datetime,
    *,
    control_ids: list[str],
    metrics: MetricsSource,
    clock: Callable[[], datetime],
) -> list[GateResult]:
    """Judge the batch against `control_ids` at `now`: a new look (counted and stored) once enough
    canary devices reported, else a NOT_ENOUGH_DATA result that is not a look."""
    canary_ids = [
        d.device_id
        for d in s.exec(
            select(RolloutDevice).where(
                RolloutDevice.rollout_id == row.id,
                RolloutDevice.batch == batch.index,
                RolloutDevice.status == DEVICE_COMMITTED,
            )
        ).all()
    ]
    since, until = ms(batch.assigned_at or now), ms(now)
    new_shas = {str(r["sha256"]) for r in row.releases}
    canary: list[judge.WindowSums] = []
    for sha in sorted(new_shas):
        canary.extend(metrics(s, canary_ids, since, until, sha).values())
    control = [
        v for v in metrics(s, control_ids, since, until, None).values() if v.model_sha256 not in new_shas
    ]
    live = [c for c in canary if c.windows > 0]
    need = max(1, min(cfg.min_devices, len(canary_ids)))
    if len(live) < need and (now - (batch.settled_at or now)).total_seconds() < cfg.max_wait_s:
        return [
            GateResult(
                "canary_vs_control",
                Verdict.NOT_ENOUGH_DATA,
                0.0,
                1.0,
                None,
                cfg.alpha,
                0.0,
                (0, 0),
                (len(live), len(control)),
                f"waiting: {len(live)}/{need} canary device(s) reported",
            )
        ]
    look = batch.looks + 1
    state = {k: float(v) for k, v in batch.gate_state.items() if not k.startswith("_")}
    seed = int.from_bytes(row.id.encode()[-4:], "big") + batch.index
    results, new_state = judge.evaluate(
        cfg,
        canary,
        control,
        look=look,
        state=state,
        cohorts=(len(canary_ids), len(control_ids)),
        seed=seed,
    )
    batch.looks = look
    batch.gate_state = {**new_state, "_last_look_ms": ms(now)}
    flag_modified(batch, "gate_state")
    s.add(batch)
    store_results(s, row.id, batch, results, look=look, now=clock())
    return results


def store_results(
    s: Session, rid: str, batch: RolloutBatch, results: list[GateResult], look: int, *, now: datetime
) -> None:
    for r in results:
        s.add(
            RolloutGateResult(
                rollout_id=rid,
                batch=batch.index,
                look=look,
                gate=r.gate,
                verdict=r.verdict.value,
                statistic=_finite(r.statistic),
                p_value=_finite(r.p_value),
                e_value=None if r.e_value is None else _finite(r.e_value),
                threshold=_finite(r.threshold),
                effect=_finite(r.effect),
                samples_canary=r.samples[0],
                samples_control=r.samples[1],
                devices_canary=r.devices[0],
                devices_control=r.devices[1],
                detail=r.detail[:1024],
                evaluated_at=now,
                value_canary=None if r.canary_value is None else _finite(r.canary_value),
                value_control=None if r.control_value is None else _finite(r.control_value),
            )
        )


def _finite(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return max(min(x, 1e300), -1e300)
