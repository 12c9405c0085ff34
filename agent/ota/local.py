"""`edgeloop-agent install FILE`: a local, development install into a model slot, gated like a release.

Owns `install_local`: verify the file (a supported model format, its sha256 against ``--sha256``
when given, room on disk), refuse while an OTA deployment is in flight, stage it as the candidate,
load and warm it up (on ``--warmup FILE.npz`` or zeros, exactly as a release), run the golden-set
gate when ``--golden`` is given (the release gate's arithmetic and minimum samples), then promote it
to ``current`` (or leave it staged with ``--slot candidate``). A refused model goes to ``broken/``
with its reason, as a refused release does. Every step is logged with the OTA client's key=value
format and the outcome is appended to ``<data>/ota/local_installs.jsonl``. The shadow run and the
watch window need live traffic, so they do not apply offline. Runs with the data directory
locked, so never beside a running daemon. Does not parse arguments (`agent.cli`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import (
    InferenceError,
    InstallRefusedError,
    IntegrityError,
    InvalidInputError,
    SlotError,
    StorageError,
)
from agent.inference.handle import ModelHolder
from agent.inference.registry import SUPPORTED_SUFFIXES
from agent.inference.runtime import RuntimeLoader
from agent.inference.warmup import parse_sample
from agent.ota import gates
from agent.ota.evaluate import GoldenSet, load_golden
from agent.ota.machine import in_flight
from agent.ota.serving import feed_for
from agent.ota.store import RecordStore
from agent.serving.models import ModelManager
from agent.slots import CANDIDATE, CURRENT, LocalSlotFS, Slots

logger = logging.getLogger(__name__)

SLOTS = (CURRENT, CANDIDATE)
LOG_FILE = "local_installs.jsonl"


@dataclass(frozen=True)
class LocalInstall:
    """What to install and how (the CLI's arguments)."""

    artifact: Path
    name: str
    version: str
    slot: str = CURRENT
    sha256: str = ""  # expected sha256 (hex); empty: not checked, only recorded
    warmup: Path | None = None
    golden: Path | None = None
    golden_threshold: float = 0.0


@dataclass
class InstallResult:
    name: str
    version: str
    slot: str
    sha256: str
    bytes: int
    warmup: str  # "sample" or "zeros"
    golden: str
    steps: list[str] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


async def install_local(
    request: LocalInstall,
    *,
    slots_root: Path,
    ota_dir: Path,
    loader: RuntimeLoader,
    wall_clock: Callable[[], float] = time.time,
    min_free_disk_bytes: int = 16 << 20,
) -> InstallResult:
    """Install `request.artifact` into `request.slot` if it passes the release gates that apply.

    Raises:
        InvalidInputError: a file that is not a model, warm-up sample or golden set (say which).
        IntegrityError: the file's sha256 is not the expected one.
        InstallRefusedError: an OTA deployment is in flight, no room on disk, or the golden gate failed.
        ModelLoadError: the model does not load or warm up (it is moved to ``broken/``).
        SlotError: the slot directory failed.
    """
    log = _Log(ota_dir / LOG_FILE, request, wall_clock)
    try:
        result = await _install(
            request,
            slots_root=slots_root,
            ota_dir=ota_dir,
            loader=loader,
            log=log,
            min_free_disk_bytes=min_free_disk_bytes,
        )
    except (InferenceError, IntegrityError, InstallRefusedError, SlotError, StorageError) as err:
        log.outcome("refused", f"{type(err).__name__}: {err}")
        raise
    log.outcome("installed", f"slot={result.slot} sha256={result.sha256[:16]}")
    result.steps = log.steps
    return result


async def _install(
    request: LocalInstall,
    *,
    slots_root: Path,
    ota_dir: Path,
    loader: RuntimeLoader,
    log: _Log,
    min_free_disk_bytes: int,
) -> InstallResult:
    if request.slot not in SLOTS:
        raise InvalidInputError(f"--slot {request.slot!r}: a local install goes to one of {SLOTS}")
    digest, size = _verify(request, slots_root, min_free_disk_bytes)
    log.step("verified", f"sha256={digest[:16]} bytes={size}")
    _not_mid_update(ota_dir)
    warmup = _read_warmup(request.warmup)
    golden = _read_golden(request.golden, request.golden_threshold)
    slots = Slots(LocalSlotFS(slots_root))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="install") as executor:
        holder = ModelHolder()
        manager = ModelManager(slots=slots, holder=holder, loader=loader, executor=executor)
        await manager.load_candidate(
            request.artifact, name=request.name, version=request.version, warmup=warmup
        )
        log.step("staged", "candidate loaded and warmed up on " + ("the sample" if warmup else "zeros"))
        detail = await asyncio.get_running_loop().run_in_executor(
            executor, _golden_gate, slots, loader, golden, request.golden_threshold
        )
        log.step("golden_check", detail)
        if request.slot == CURRENT:
            await manager.promote()
            log.step("switched", f"serving {request.name}@{request.version} from current/")
        holder.clear()
    return InstallResult(
        request.name, request.version, request.slot, digest, size, "sample" if warmup else "zeros", detail
    )


def _verify(request: LocalInstall, slots_root: Path, min_free_disk_bytes: int) -> tuple[str, int]:
    path = request.artifact
    if not path.is_file():
        raise InvalidInputError(f"{path} is not a file")
    if path.suffix not in SUPPORTED_SUFFIXES:
        raise InvalidInputError(
            f"{path.name}: unsupported model format {path.suffix!r}; use {SUPPORTED_SUFFIXES}"
        )
    size = path.stat().st_size
    if size == 0:
        raise InvalidInputError(f"{path} is empty")
    digest = sha256_of(path)
    expected = request.sha256.lower()
    if expected and digest != expected:
        raise IntegrityError(
            f"{path.name} has sha256 {digest}, not the expected {expected}: the file changed"
        )
    slots_root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(slots_root).free
    if free < 2 * size + min_free_disk_bytes:
        raise InstallRefusedError(
            f"not enough disk under {slots_root}: {free} bytes free, {2 * size + min_free_disk_bytes} needed"
        )
    return digest, size


def _not_mid_update(ota_dir: Path) -> None:
    path = ota_dir / "update.json"
    if not path.exists():
        return
    record = RecordStore(path).load()
    if in_flight(record):
        raise InstallRefusedError(
            f"an OTA deployment is in progress (state {record.state}, deployment {record.deployment_id}); "
            "let it finish before installing by hand"
        )


def _read_warmup(path: Path | None) -> dict[str, np.ndarray] | None:
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        raise InvalidInputError(f"cannot read warm-up sample {path}: {err}") from err
    return parse_sample(data)


def _read_golden(path: Path | None, threshold: float) -> GoldenSet | None:
    if path is None:
        if threshold > 0:
            raise InvalidInputError("--golden-threshold needs --golden")
        return None
    try:
        return load_golden(path)
    except (OSError, ValueError, KeyError) as err:
        raise InvalidInputError(
            f"golden set {path} unusable (.npz with input:<name> arrays and labels): {err}"
        ) from err


def _golden_gate(slots: Slots, loader: RuntimeLoader, golden: GoldenSet | None, threshold: float) -> str:
    if golden is None:
        return "no golden set given"
    runtime = loader(slots.artifact_path(CANDIDATE))
    try:
        outputs = [next(iter(runtime.run(feed_for(runtime.signature, b)).values())) for b in golden.batches]
    except InferenceError as err:
        reason = f"golden set not evaluable: {err}"
        slots.refuse_candidate(reason)
        raise InstallRefusedError(reason) from err
    finally:
        runtime.close()
    accuracy = gates.golden_accuracy(np.concatenate(outputs), golden.labels)
    verdict = gates.golden_verdict(accuracy, threshold, n=len(golden.labels), limits=gates.thresholds({}))
    if not verdict.passed:
        slots.refuse_candidate(verdict.detail)
        raise InstallRefusedError(f"golden gate failed: {verdict.detail}")
    return verdict.detail


class _Log:
    """Steps logged like OTA transitions; the outcome appended to the local install log."""

    def __init__(self, path: Path, request: LocalInstall, clock: Callable[[], float]) -> None:
        self._path = path
        self._request = request
        self._clock = clock
        self._id = f"local-{int(clock() * 1000)}"
        self.steps: list[str] = []

    def step(self, to: str, detail: str) -> None:
        self.steps.append(f"{to}: {detail}")
        logger.info(
            "ota transition to=%s deployment_id=%s model=%s@%s detail=%s",
            to, self._id, self._request.name, self._request.version, detail,
        )  # fmt: skip

    def outcome(self, outcome: str, detail: str) -> None:
        entry = {
            "at": self._clock(),
            "deployment_id": self._id,
            "outcome": outcome,
            "detail": detail,
            "steps": self.steps,
            **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(self._request).items()},
        }
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._path.open("a") as fh:
                fh.write(json.dumps(entry, sort_keys=True) + "\n")
        except OSError as err:
            raise StorageError(f"cannot append to the local install log {self._path}: {err}") from err
        logger.info("local install %s deployment_id=%s detail=%s", outcome, self._id, detail)
