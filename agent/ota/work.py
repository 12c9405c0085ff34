"""The work of each update state (download, verify, stage, gates, switch, watch, commit, revert).

`Work.run(record)` performs the state's work through the ports and returns the outcome event: the
state's own events, RETRY with the error for a transient failure (network, disk I/O; the machine
bounds the attempts), the state's give-up event at once for a terminal HTTP status (4xx), or None
when the agent is stopping. Each piece is idempotent so a crash can re-run it: downloads resume from
``.partial``, staging replaces the candidate, the switch checks whether it already happened, revert
checks what is serving. A release's drift reference is fetched and checked against its signed hash
while verifying (a mismatch fails the install like a tampered artifact) and written beside the
candidate when staging, so it moves with the model on switch and rollback. A release's warm-up
sample (``warmup.npz``) is fetched and checked the same way and the candidate is warmed up on it
(zeros when the release ships none); a sample that is not a readable ``.npz`` fails the install at
verify. Owns the OTA working directory: ``downloads/`` (cleared when a deployment ends) and
``manifests/<sha256>.json`` (kept for models the device holds: the delta sources).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from agent.drift.feeder import REFERENCE_FILE
from agent.errors import (
    AgentError,
    InferenceError,
    IntegrityError,
    InvalidInputError,
    SlotError,
    TransportError,
)
from agent.inference.warmup import MAX_WARMUP_BYTES, parse_sample
from agent.ota import gates
from agent.ota.evaluate import GoldenSet, golden_check, load_golden, shadow_check
from agent.ota.fetcher import Downloader, HttpStatusError, sha256_file
from agent.ota.machine import UpdateRecord
from agent.ota.serving import ServingPort
from agent.ota.states import GIVE_UP, UpdateEvent, UpdateState
from agent.ota.transfer import Transfer
from agent.ota.trust import Plan, TargetRef
from protos.edgeloop import windows

logger = logging.getLogger(__name__)

S, E = UpdateState, UpdateEvent
Resources = Callable[[], tuple[int, int]]  # (free disk bytes, available RAM bytes)


@dataclass(frozen=True)
class Outcome:
    event: UpdateEvent
    detail: str = ""


@dataclass(frozen=True)
class WorkLimits:
    min_free_disk_bytes: int = 16 << 20
    min_free_ram_bytes: int = 32 << 20
    use_delta: bool = True
    max_golden_bytes: int = 64 << 20
    max_drift_reference_bytes: int = 8 << 20  # the fleet server's publish limit too
    max_warmup_bytes: int = MAX_WARMUP_BYTES
    profile: str = ""  # this device's profile; a release listing profiles must name it
    window_poll_s: float = 60.0  # awaiting an apply window: look at the wall clock at least this often


class Work:
    def __init__(
        self,
        *,
        directory: Path,
        downloader: Downloader,
        serving: ServingPort,
        resources: Resources,
        limits: WorkLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.dir = directory
        self.downloads = directory / "downloads"
        self.manifests = directory / "manifests"
        self.downloader = downloader
        self.serving = serving
        self._resources = resources
        self._limits = limits or WorkLimits()
        self._clock = clock
        self._wall_clock = wall_clock  # apply windows are wall-clock time (UTC, tz-aware)
        self.downloads.mkdir(parents=True, exist_ok=True)
        self.manifests.mkdir(parents=True, exist_ok=True)
        self.last_delta: dict[str, int] = {}
        # (candidate sha256, top-1 agreement, rows) of the last shadow run, for live model metrics
        self.last_shadow: tuple[str, float, int] | None = None
        self.transfer = Transfer(
            downloader=downloader,
            downloads=self.downloads,
            manifests=self.manifests,
            held=serving.held_models,
        )

    async def run(
        self, record: UpdateRecord, stop: asyncio.Event, *, save: Callable[[UpdateRecord], None]
    ) -> Outcome | None:
        plan = Plan.from_dict(record.plan)
        try:
            return await self._dispatch(record, plan, stop, save)
        except (TransportError, OSError) as err:
            failed = GIVE_UP.get(record.state)
            if isinstance(err, HttpStatusError) and err.terminal and failed is not None:
                return Outcome(failed, str(err))
            logger.warning(
                "ota work failed, will retry state=%s deployment_id=%s: %s",
                record.state, record.deployment_id, err,
            )  # fmt: skip
            reason = str(err) if isinstance(err, TransportError) else f"{type(err).__name__}: {err}"
            return Outcome(E.RETRY, reason[:512])

    async def _dispatch(
        self, record: UpdateRecord, plan: Plan, stop: asyncio.Event, save: Callable[[UpdateRecord], None]
    ) -> Outcome | None:
        state = record.state
        if state is S.DOWNLOADING:
            return await asyncio.to_thread(self.download, plan)
        if state is S.VERIFYING:
            return await asyncio.to_thread(self.verify, plan)
        if state is S.STAGING:
            return await self.stage(plan)
        if state is S.GOLDEN_CHECK:
            return await self.golden(plan)
        if state is S.SHADOWING:
            return await self.shadow(plan, stop)
        if state is S.AWAITING_WINDOW:
            return await self.await_window(plan, stop)
        if state is S.SWITCHING:
            return await self.switch(record, plan, save)
        if state is S.WATCHING:
            return await self.watch(plan, stop)
        if state is S.COMMITTING:
            return Outcome(E.COMMIT_DONE, f"serving {plan.model_name}@{plan.model_version}")
        if state is S.REVERTING:
            return await self.revert(plan)
        raise RuntimeError(f"no work for state {state}")

    # ------------------------------------------------------------ download and verify

    def artifact_path(self, plan: Plan) -> Path:
        return self.downloads / f"{plan.artifact.sha256}.{plan.artifact.path.rsplit('/', 1)[-1]}"

    def download(self, plan: Plan) -> Outcome:
        dest = self.artifact_path(plan)
        if plan.profiles and self._limits.profile not in plan.profiles:
            return Outcome(
                E.DOWNLOAD_FAILED, f"release is for {plan.profiles}, device is {self._limits.profile!r}"
            )
        if dest.exists():
            return Outcome(E.DOWNLOADED, "already downloaded")
        disk, ram = self._resources()
        need = 2 * plan.artifact.length + self._limits.min_free_disk_bytes
        if disk < need:
            return Outcome(E.DOWNLOAD_FAILED, f"not enough disk: {disk} free, {need} needed")
        if ram < plan.artifact.length + self._limits.min_free_ram_bytes:
            return Outcome(E.DOWNLOAD_FAILED, f"not enough RAM to load the model: {ram} available")
        try:
            detail = self.transfer.fetch(plan, dest, use_delta=self._limits.use_delta)
        except IntegrityError as err:
            return Outcome(E.DOWNLOAD_FAILED, str(err))
        self.last_delta = {"fetched": self.transfer.last.fetched, "reused": self.transfer.last.reused,
                           "patched": self.transfer.last.patched}  # fmt: skip
        return Outcome(E.DOWNLOADED, detail)

    def verify(self, plan: Plan) -> Outcome:
        path = self.artifact_path(plan)
        if not path.exists():
            return Outcome(E.VERIFY_FAILED, "artifact missing")
        if path.stat().st_size != plan.artifact.length or sha256_file(path) != plan.artifact.sha256:
            path.unlink()
            return Outcome(E.VERIFY_FAILED, "artifact does not match the signed length and sha256")
        if plan.manifest is not None:
            data = self.transfer.small(plan.manifest)
            (self.manifests / f"{plan.artifact.sha256}.json").write_bytes(data)
        if plan.drift_reference is not None:
            try:
                self._drift_reference(plan.drift_reference)
            except IntegrityError as err:
                return Outcome(E.VERIFY_FAILED, f"drift reference refused: {err}")
        if plan.warmup is not None:
            try:
                self._warmup(plan.warmup)
            except (IntegrityError, InvalidInputError) as err:
                return Outcome(E.VERIFY_FAILED, f"warm-up sample refused: {err}")
        return Outcome(E.VERIFIED, f"sha256={plan.artifact.sha256[:16]}")

    def _drift_reference(self, ref: TargetRef) -> bytes:
        """The release's drift reference, fetched once and checked against the signed target.

        Raises:
            IntegrityError: larger than the configured limit, or not the signed bytes.
            TransportError, HttpStatusError: the repository failed.
        """
        if ref.length > self._limits.max_drift_reference_bytes:
            raise IntegrityError(
                f"{ref.length} bytes is more than the limit of {self._limits.max_drift_reference_bytes}"
            )
        data = self.transfer.small(ref)
        if len(data) != ref.length or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise IntegrityError("does not match the signed length and sha256")
        return data

    def _warmup(self, ref: TargetRef) -> dict[str, np.ndarray]:
        """The release's warm-up sample, fetched and checked against the signed target.

        Raises:
            IntegrityError: larger than the limit, or not the signed bytes.
            InvalidInputError: not a readable ``.npz`` of arrays.
            TransportError, HttpStatusError: the repository failed.
        """
        if ref.length > self._limits.max_warmup_bytes:
            raise IntegrityError(
                f"{ref.length} bytes is more than the limit of {self._limits.max_warmup_bytes}"
            )
        data = self.transfer.small(ref)
        if len(data) != ref.length or hashlib.sha256(data).hexdigest() != ref.sha256:
            raise IntegrityError("does not match the signed length and sha256")
        return parse_sample(data)

    # ------------------------------------------------------------ stage and gates

    async def stage(self, plan: Plan) -> Outcome:
        reference = None
        if plan.drift_reference is not None:  # verified already; read before the candidate loads
            try:
                reference = await asyncio.to_thread(self._drift_reference, plan.drift_reference)
            except IntegrityError as err:
                return Outcome(E.STAGE_FAILED, f"drift reference refused: {err}")
        warmup = None
        if plan.warmup is not None:  # verified already
            try:
                warmup = await asyncio.to_thread(self._warmup, plan.warmup)
            except (IntegrityError, InvalidInputError) as err:
                return Outcome(E.STAGE_FAILED, f"warm-up sample refused: {err}")
        extra = {"warmup": warmup} if warmup is not None else {}
        try:
            await self.serving.load_candidate(
                self.artifact_path(plan), name=plan.model_name, version=plan.model_version, **extra
            )
            if reference is not None:
                await asyncio.to_thread(self.serving.add_candidate_file, REFERENCE_FILE, reference)
        except (InferenceError, SlotError) as err:
            return Outcome(E.STAGE_FAILED, f"{type(err).__name__}: {err}")
        detail = "candidate loaded and warmed up " + ("on the release's sample" if warmup else "on zeros")
        detail += f", {REFERENCE_FILE} staged" if reference else ""
        return Outcome(E.STAGED, detail)

    def _golden_set(self, plan: Plan) -> GoldenSet | None:
        if plan.golden is None:
            return None
        if plan.golden.length > self._limits.max_golden_bytes:
            raise IntegrityError("golden set larger than the configured limit")
        self.transfer.small(plan.golden)
        return load_golden(self.downloads / f"{plan.golden.sha256}.golden.npz")

    async def golden(self, plan: Plan) -> Outcome:
        try:
            golden = await asyncio.to_thread(self._golden_set, plan)
        except (IntegrityError, ValueError, KeyError, OSError) as err:
            return Outcome(E.GOLDEN_FAILED, f"golden set unusable: {err}")
        passed, detail = await golden_check(
            self.serving, golden, plan.golden_threshold, gates.thresholds(plan.gates)
        )
        return Outcome(E.GOLDEN_PASSED if passed else E.GOLDEN_FAILED, detail)

    async def shadow(self, plan: Plan, stop: asyncio.Event) -> Outcome | None:
        try:
            golden = await asyncio.to_thread(self._golden_set, plan)
        except (IntegrityError, ValueError, KeyError) as err:
            logger.warning("golden inputs unavailable for the shadow run: %s", err)
            golden = None

        def measured(agreement: float, rows: int) -> None:
            self.last_shadow = (plan.artifact.sha256, agreement, rows)

        judged = await shadow_check(
            self.serving,
            golden,
            gates.thresholds(plan.gates),
            clock=self._clock,
            wait=_waiter(stop),
            measured=measured,
        )
        if judged is None:
            return None  # stopping: the shadow run starts again after the restart
        passed, detail = judged
        if passed and not windows.is_open(windows.parse(plan.apply_windows), self._wall_clock()):
            wait = windows.describe_wait(windows.parse(plan.apply_windows), self._wall_clock(), "apply")
            return Outcome(E.WINDOW_CLOSED, f"{detail}; {wait}")
        return Outcome(E.SHADOW_PASSED if passed else E.SHADOW_FAILED, detail)

    async def await_window(self, plan: Plan, stop: asyncio.Event) -> Outcome | None:
        """Wait (staged, gates passed) until an apply window of the assignment is open."""
        parsed = windows.parse(plan.apply_windows)
        wait = _waiter(stop)
        while True:
            now = self._wall_clock()
            if windows.is_open(parsed, now):
                return Outcome(E.WINDOW_OPENED, f"apply window open at {now.isoformat(timespec='seconds')}")
            nxt = windows.next_open(parsed, now)
            until = (nxt - now).total_seconds() if nxt is not None else self._limits.window_poll_s
            if await wait(max(0.01, min(until, self._limits.window_poll_s))):
                return None  # stopping: a restart stages and gates again, then waits again

    # ------------------------------------------------------------ switch, watch, revert

    def already_switched(self, plan: Plan, record: UpdateRecord) -> bool:
        model = self.serving.serving()
        return bool(record.previous_sha256) and model is not None and model.sha256 == plan.artifact.sha256

    async def switch(self, record: UpdateRecord, plan: Plan, save: Callable[[UpdateRecord], None]) -> Outcome:
        if self.already_switched(plan, record):
            return Outcome(E.SWITCHED, "already switched")
        current = self.serving.serving()
        save(replace(record, previous_sha256=current.sha256 if current else "none"))
        self.serving.release_evaluators()
        try:
            await self.serving.promote()
        except (SlotError, InferenceError) as err:
            return Outcome(E.SWITCH_FAILED, f"{type(err).__name__}: {err}")
        return Outcome(E.SWITCHED, f"serving {plan.model_name}@{plan.model_version}")

    async def watch(self, plan: Plan, stop: asyncio.Event) -> Outcome | None:
        limits = gates.thresholds(plan.gates)
        req0, err0 = self.serving.error_counts()
        wait = _waiter(stop)
        start = self._clock()
        if await wait(limits["watch_s"]):
            return None  # stopping: the watch restarts after the restart
        longest = max(limits["watch_s"], limits["watch_max_s"])
        while True:
            model = self.serving.serving()
            if model is None or model.sha256 != plan.artifact.sha256:
                return Outcome(
                    E.WATCH_FAILED, "the release is no longer serving (it failed to load at start)"
                )
            req1, err1 = self.serving.error_counts()
            final = self._clock() - start >= longest
            verdict = gates.watch_verdict(
                requests=max(0, req1 - req0), errors=max(0, err1 - err0), limits=limits, final=final
            )
            if verdict is not None:
                return Outcome(E.WATCH_PASSED if verdict.passed else E.WATCH_FAILED, verdict.detail)
            if await wait(min(max(0.01, limits["shadow_poll_s"]), longest)):
                return None

    async def revert(self, plan: Plan) -> Outcome:
        model = self.serving.serving()
        if model is None or model.sha256 != plan.artifact.sha256:
            return Outcome(E.REVERTED, "previous model serving")
        try:
            await self.serving.rollback()
        except AgentError as err:
            return Outcome(E.REVERT_FAILED, f"{type(err).__name__}: {err}")
        return Outcome(E.REVERTED, "previous model restored")

    def finished(self, record: UpdateRecord) -> None:
        """A deployment ended: drop downloads and manifests of models no longer held."""
        self.serving.release_evaluators()
        shutil.rmtree(self.downloads, ignore_errors=True)
        self.downloads.mkdir(parents=True, exist_ok=True)
        held = {sha for _, sha in self.serving.held_models()}
        for manifest in self.manifests.glob("*.json"):
            if manifest.stem not in held:
                manifest.unlink(missing_ok=True)


def _waiter(stop: asyncio.Event) -> Callable[[float], Awaitable[bool]]:
    """Sleep up to `s` seconds; True when the agent is stopping."""

    async def wait(s: float) -> bool:
        try:
            await asyncio.wait_for(stop.wait(), timeout=s)
        except TimeoutError:
            return False
        return True

    return wait
