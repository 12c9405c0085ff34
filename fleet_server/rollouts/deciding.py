"""Deciding a rollout's next event from the database, or that there is none yet.

Owns the observations a decision rests on and writes them in the caller's transaction: the
batch's device progress from the OTA reports (committed, failed, silent past the timeout unless a
download or apply window kept the device from installing), the install gate, when the metric gates
are looked at (look interval, minimum window, `max_looks`, `max_wait_s` and `on_no_data`), the
control cohort (this rollout's devices still pending), and while rolling back, each device's
return to its previous model.

Does not step the state machine, persist the step or run effects (`engine.py`, `effects.py`);
one look at the metric gates is `looks.py`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlmodel import Session, select

from fleet_server.rollouts import judge
from fleet_server.rollouts.gates import Verdict, install_gate
from fleet_server.rollouts.looks import metric_gates, store_results
from fleet_server.rollouts.machine import Ctx
from fleet_server.rollouts.models import (
    DEVICE_ASSIGNED,
    DEVICE_COMMITTED,
    DEVICE_FAILED,
    DEVICE_PENDING,
    DEVICE_ROLLED_BACK,
    DEVICE_ROLLING_BACK,
    DEVICE_SILENT,
    DEVICE_UNKNOWN,
    Rollout,
    RolloutBatch,
    RolloutDevice,
)
from fleet_server.rollouts.ports import MetricsSource
from fleet_server.rollouts.rows import FAILED_STATES, batch_row, ms, statuses
from fleet_server.rollouts.schemas import GateConfig
from fleet_server.rollouts.states import RolloutEvent, RolloutState
from fleet_server.rollouts.windows import download_wait

S, E = RolloutState, RolloutEvent
AWAITING_WINDOW = "awaiting_window"  # the agent's OTA state while its apply window is closed


class Decider:
    """`decide(session, row)`: the event that advances the rollout now, with its context."""

    def __init__(self, *, clock: Callable[[], datetime], metrics: MetricsSource) -> None:
        self.clock = clock
        self.metrics = metrics

    def decide(self, s: Session, row: Rollout) -> tuple[RolloutEvent, Ctx] | None:
        state = RolloutState(row.state)
        if state is S.ROLLING_BACK:
            return self.decide_rollback(s, row)
        if state not in (S.RUNNING, S.WAITING):
            return None
        cfg = GateConfig.model_validate(row.gates)
        batch = batch_row(s, row.id, row.batch)
        devices = self.refresh_batch(s, row, batch, cfg)
        counts = Counter(d.status for d in devices)
        gate = install_gate(
            batch_size=max(len(devices), 1),
            committed=counts[DEVICE_COMMITTED],
            failed=counts[DEVICE_FAILED],
            silent=counts[DEVICE_SILENT],
            max_failure_rate=cfg.max_failure_rate,
        )
        now = self.clock()
        if gate.verdict is Verdict.FAIL:
            store_results(s, row.id, batch, [gate], look=batch.looks, now=self.clock())
            return E.GATES_FAILED, Ctx(detail=f"{gate.gate}: {gate.detail}")
        if state is S.RUNNING:
            if gate.verdict is Verdict.PASS or not devices:
                batch.settled_at = now
                s.add(batch)
                store_results(s, row.id, batch, [gate], look=batch.looks, now=self.clock())
                return E.BATCH_SETTLED, Ctx(detail=gate.detail)
            return None
        # WAITING: canary vs control, at most once per look interval. With no control cohort left
        # (the last batch of a rollout that covers every matching device) there is nothing to
        # compare against: the batch is judged on its installs alone, at once, never by waiting
        # out `max_wait_s` (which would hold every later rollout of these devices for an hour).
        # No metric gate configured: nothing to wait for either.
        if not cfg.metrics:
            return E.GATES_PASSED, Ctx(detail="no metric gates configured: judged on installs alone")
        control_ids = self.control(s, row)
        if not control_ids:
            skipped = judge.no_control()
            store_results(s, row.id, batch, [skipped], look=batch.looks, now=self.clock())
            return E.GATES_PASSED, Ctx(detail=skipped.detail)
        last = batch.gate_state.get("_last_look_ms")
        if last is not None and ms(now) - int(last) < cfg.look_interval_s * 1000:
            return None
        settled = batch.settled_at or now
        if (now - settled).total_seconds() < cfg.min_window_s:
            return None
        results = metric_gates(
            s, row, batch, cfg, now, control_ids=control_ids, metrics=self.metrics, clock=self.clock
        )
        verdict = judge.combined(results)
        if verdict is Verdict.FAIL:
            failed = "; ".join(f"{r.gate}: {r.detail}" for r in results if r.verdict is Verdict.FAIL)
            return E.GATES_FAILED, Ctx(detail=failed)
        if verdict is Verdict.PASS:
            return E.GATES_PASSED, Ctx(detail=", ".join(f"{r.gate} {r.verdict.value}" for r in results))
        if verdict is Verdict.INCONCLUSIVE and batch.looks >= cfg.max_looks:
            # Every look had its data and none showed harm: promote after the full bake (as a
            # Flagger analysis does after its iterations), never on the first look that fails to
            # reject "harmless".
            return E.GATES_PASSED, Ctx(
                detail=f"no gate failed in {batch.looks} looks (max_looks); "
                + ", ".join(f"{r.gate} {r.verdict.value}" for r in results)
            )
        if (now - settled).total_seconds() >= cfg.max_wait_s:
            why = f"not enough metric data after {cfg.max_wait_s:g} s"
            if cfg.on_no_data == "breach":
                return E.GATES_FAILED, Ctx(detail=why)
            return E.GATES_PASSED, Ctx(detail=f"{why}; passed on installs alone (on_no_data=pass)")
        return None

    def refresh_batch(
        self, s: Session, row: Rollout, batch: RolloutBatch, cfg: GateConfig
    ) -> list[RolloutDevice]:
        """Device progress of the batch from the OTA reports; silent past the timeout = failure."""
        devices = list(
            s.exec(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == row.id, RolloutDevice.batch == batch.index
                )
            ).all()
        )
        live = [d for d in devices if d.deployment_id]
        found = statuses(s, [(d.device_id, d.deployment_id) for d in live])
        now = self.clock()
        silent_after = (batch.assigned_at or now) + timedelta(seconds=cfg.silent_timeout_s)
        # A device cannot be silent for not installing while it was not allowed to: no silent
        # timeout while the download window is closed, nor for a device awaiting its apply window.
        window_closed = download_wait(row.batch_spec, now) is not None
        for d in live:
            if d.status not in (DEVICE_ASSIGNED, DEVICE_SILENT, DEVICE_COMMITTED, DEVICE_FAILED):
                continue
            st = found.get((d.device_id, d.deployment_id))
            new, detail = d.status, d.detail
            if st is not None and st.state == "committed":
                new, detail = DEVICE_COMMITTED, ""
            elif st is not None and st.state in FAILED_STATES:
                new, detail = DEVICE_FAILED, f"{st.state}: {st.detail}"[:1024]
            elif (
                d.status == DEVICE_ASSIGNED
                and now >= silent_after
                # a device that left awaiting_window reported since: silent from its last report
                and not (
                    st is not None
                    and st.updated_at is not None
                    and st.state in ("switching", "watching", "committing")
                    and now < st.updated_at + timedelta(seconds=cfg.silent_timeout_s)
                )
                and not window_closed
                and not (st is not None and st.state == AWAITING_WINDOW)
            ):
                new = DEVICE_SILENT
                last = st.state if st else "none"
                detail = f"no install report within {cfg.silent_timeout_s:g} s (last: {last})"
            if (new, detail) != (d.status, d.detail):
                d.status, d.detail, d.updated_at = new, detail, now
                s.add(d)
        return devices

    def control(self, s: Session, row: Rollout) -> list[str]:
        """Matching devices still on the previous model: this rollout's later batches' devices
        and matching devices outside any rollout batch assigned so far."""
        return list(
            s.exec(
                select(RolloutDevice.device_id).where(
                    RolloutDevice.rollout_id == row.id, RolloutDevice.status == DEVICE_PENDING
                )
            ).all()
        )

    def decide_rollback(self, s: Session, row: Rollout) -> tuple[RolloutEvent, Ctx] | None:
        """ROLLBACK_DONE once every device rolling back committed its previous model, failed to,
        or stayed silent past `rollback_timeout_s`; None while some are still on their way."""
        cfg = GateConfig.model_validate(row.gates)
        devices = list(
            s.exec(
                select(RolloutDevice).where(
                    RolloutDevice.rollout_id == row.id, RolloutDevice.status == DEVICE_ROLLING_BACK
                )
            ).all()
        )
        found = statuses(s, [(d.device_id, d.rollback_deployment_id) for d in devices])
        now = self.clock()
        started = row.rollback.get("_started_ms")
        deadline_passed = started is not None and ms(now) - int(started) >= cfg.rollback_timeout_s * 1000
        left = 0
        for d in devices:
            st = found.get((d.device_id, d.rollback_deployment_id))
            if st is not None and st.state == "committed":
                d.status, d.detail = DEVICE_ROLLED_BACK, "previous model committed"
            elif st is not None and st.state in FAILED_STATES:
                d.status, d.detail = DEVICE_UNKNOWN, f"rollback install {st.state}: {st.detail}"[:1024]
            elif deadline_passed:
                d.status = DEVICE_UNKNOWN
                d.detail = f"no report of the previous model within {cfg.rollback_timeout_s:g} s"
            else:
                left += 1
                continue
            d.updated_at = now
            s.add(d)
        if left:
            return None
        counts = Counter(
            d.status for d in s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == row.id)).all()
        )
        return E.ROLLBACK_DONE, Ctx(
            detail=f"{counts[DEVICE_ROLLED_BACK]} rolled back, {counts[DEVICE_UNKNOWN]} unknown"
        )
