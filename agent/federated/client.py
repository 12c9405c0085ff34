"""`FederatedClient`: the daemon's federated-learning task (one asyncio task per agent).

Holds a `FederatedService/Tasks` stream open while training is allowed, runs each task with the
configured trainer (`[federated] trainer`: numpy by default, torch behind the agent's `train` extra)
on the bounded sample store, applies client-side DP when the task asks for it (refusing rounds that
would exceed the device's epsilon budget), and pushes one result per task.
Reconnects with capped exponential backoff. Conditions (idle, charging, unmetered, not mid-update)
come from a `ConditionsSource` port: the daemon feeds real readings (`conditions.SystemConditions`),
the default (`StaticConditions`) allows everything. The samples come from the device: apps post
labelled rows to the inference API's Feedback, which writes them into `store`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np

from agent.errors import AgentError, ConfigError, InvalidInputError, TransportError
from agent.federated import train_torch, trainer
from agent.federated.privacy import PrivacyLedger, clip_and_noise
from agent.federated.secagg import SecAggClient
from agent.federated.store import SampleStore
from agent.federated.tensors import blob, config_from_proto, num, tensor_from_proto, tensor_to_proto
from agent.federated.transport import GrpcFederatedLink
from agent.identity import Identity
from protos.edgeloop.v1 import federated_pb2 as pb

logger = logging.getLogger(__name__)

TRAINERS = ("numpy", "torch")
TrainFn = Callable[
    [list[np.ndarray], np.ndarray, np.ndarray, trainer.TrainParams], tuple[list[np.ndarray], float]
]


@dataclass(frozen=True)
class FederatedConfig:
    enabled: bool = True
    server_name: str = ""
    require_idle: bool = True
    require_charging: bool = True
    require_unmetered: bool = True
    require_not_updating: bool = True  # no training while a model update is in flight
    max_load_per_cpu: float = 0.5  # "idle": 1-minute load average per CPU below this
    metered: bool = False  # the link is metered (cellular); Linux has no portable flag for it
    max_samples: int = 5000
    max_sample_age_s: float = 30 * 86400
    epsilon_budget: float = 10.0  # per device, across all rounds and runs
    delta: float = 1e-5
    max_task_bytes: int = 64 * 2**20
    retry_max_s: float = 30.0
    trainer: str = "numpy"  # "numpy" | "torch" (needs the agent's `train` extra)
    torch_threads: int = 0  # torch.set_num_threads for the torch trainer; 0: torch's default

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object]) -> FederatedConfig:
        """Build from the `[federated]` table of agent.toml.

        Raises:
            ConfigError: unknown or bad keys, or `trainer = "torch"` without torch installed.
        """
        unknown = set(raw) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"[federated]: unknown keys {sorted(unknown)}")
        defaults = cls()
        values: dict[str, object] = {}
        for key, given in raw.items():
            want = type(getattr(defaults, key))
            value = float(given) if want is float and type(given) is int else given
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"[federated].{key}: expected {want.__name__}, got {value!r}")
            values[key] = value
        config = cls(**values)  # type: ignore[arg-type]
        if not config.max_load_per_cpu > 0:
            raise ConfigError(f"[federated].max_load_per_cpu must be > 0, got {config.max_load_per_cpu}")
        if config.trainer not in TRAINERS:
            raise ConfigError(f"[federated].trainer must be one of {list(TRAINERS)}, got {config.trainer!r}")
        if config.torch_threads < 0:
            raise ConfigError(f"[federated].torch_threads must be >= 0, got {config.torch_threads}")
        if config.trainer == "torch":
            train_torch.require()
        return config


def select_trainer(config: FederatedConfig) -> TrainFn:
    """The `train` function `config.trainer` names (torch is imported only when it first trains)."""
    if config.trainer == "torch":
        return functools.partial(train_torch.train, threads=config.torch_threads)
    return trainer.train


class ConditionsSource(Protocol):
    def current(self) -> dict[str, float]:
        """idle / charging / unmetered / not_updating as 1.0 or 0.0 (plus any extra readings)."""
        ...


@dataclass(frozen=True)
class StaticConditions:
    """Fixed readings: the default source (and the fake in tests)."""

    idle: bool = True
    charging: bool = True
    unmetered: bool = True
    not_updating: bool = True

    def current(self) -> dict[str, float]:
        return {
            "idle": float(self.idle),
            "charging": float(self.charging),
            "unmetered": float(self.unmetered),
            "not_updating": float(self.not_updating),
        }


_BLOCKED = {
    "idle": "device not idle",
    "charging": "device not charging",
    "unmetered": "link is metered",
    "not_updating": "a model update is in progress",
}


def blocked_reason(config: FederatedConfig, state: dict[str, float]) -> str:
    """Why the device may not train now ("" when it may); a missing reading counts as not met."""
    for flag, needed in (
        ("idle", config.require_idle),
        ("charging", config.require_charging),
        ("unmetered", config.require_unmetered),
        ("not_updating", config.require_not_updating),
    ):
        if needed and state.get(flag, 0.0) < 0.5:
            return f"not allowed to train: {_BLOCKED[flag]}"
    return ""


class FederatedLink(Protocol):
    """One connection to the federated grid: gRPC (`transport.GrpcFederatedLink`) or MQTT
    (`mqtt_link.MqttFederatedLink`). Failures raise TransportError."""

    def tasks(self, state: dict[str, float], capabilities: list[str]) -> AsyncIterator[pb.TrainTask]: ...

    async def push(self, result: pb.TaskResult, timeout_s: float = 30.0) -> pb.PushResultResponse: ...

    async def close(self) -> None: ...


class FederatedClient:
    """Runs federated tasks for this device until `stop` is set.

    `link_factory` opens a new link per attempt (the daemon passes one that reloads the identity,
    so a renewed certificate is used, and that picks the device's transport); without it the client
    dials gRPC with the identity it was given.
    """

    def __init__(
        self,
        *,
        identity: Identity,
        endpoint: str,
        data_dir: Path,
        config: FederatedConfig | None = None,
        conditions: ConditionsSource | None = None,
        link_factory: Callable[[], FederatedLink] | None = None,
    ) -> None:
        self._identity = identity
        self._endpoint = endpoint
        self._link_factory = link_factory
        self.config = config or FederatedConfig()
        self._train_fn = select_trainer(self.config)
        self._conditions = conditions or StaticConditions()
        fl_dir = data_dir / "federated"
        self.store = SampleStore(
            fl_dir / "samples.db",
            max_samples=self.config.max_samples,
            max_age_s=self.config.max_sample_age_s,
            replace_on_width_change=True,  # a new backbone: old features are useless to the new head
        )
        self.ledger = PrivacyLedger(
            fl_dir / "privacy_ledger.json", budget_epsilon=self.config.epsilon_budget, delta=self.config.delta
        )
        self.tasks_done = 0
        self.secagg = SecAggClient()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve tasks until `stop` is set; never raises for link failures (they are retried)."""
        if not self.config.enabled:
            logger.info("federated learning disabled by config")
            return
        delay = 1.0
        while not stop.is_set():
            link = self._link_factory() if self._link_factory is not None else self._grpc_link()
            try:
                await self._serve_until(link, stop)
                delay = 1.0
            except TransportError as err:
                logger.warning(
                    "federated link lost device_id=%s: %s (retry in %.0fs)",
                    self._identity.device_id,
                    err,
                    delay,
                )
            finally:
                await link.close()
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                delay = min(self.config.retry_max_s, delay * 2)

    def _grpc_link(self) -> FederatedLink:
        return GrpcFederatedLink(
            identity=self._identity,
            endpoint=self._endpoint,
            server_name=self.config.server_name,
            max_task_bytes=self.config.max_task_bytes,
        )

    async def _serve_until(self, link: FederatedLink, stop: asyncio.Event) -> None:
        serve = asyncio.create_task(self._serve(link))
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({serve, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for t in (serve, stopper):
            t.cancel()
        if serve in done and not serve.cancelled() and serve.exception() is not None:
            raise serve.exception()  # type: ignore[misc]

    async def _serve(self, link: FederatedLink) -> None:
        async for task in link.tasks(self._conditions.current(), ["train", "evaluate", "dp"]):
            result = await asyncio.to_thread(self.handle, task)
            resp = await link.push(result)
            self.tasks_done += 1
            if not resp.accepted:
                logger.warning("result refused round_id=%s reason=%s", task.round_id, resp.reason)

    def handle(self, task: pb.TrainTask) -> pb.TaskResult:
        """Run one task to a result (errors become a declined result, never an exception)."""
        try:
            return self._run_task(task)
        except AgentError as err:
            logger.warning("task failed round_id=%r kind=%r: %s", task.round_id[:64], task.kind[:64], err)
            return pb.TaskResult(task_id=task.task_id, round_id=task.round_id, error=str(err)[:500])
        except (ValueError, KeyError, TypeError, IndexError, OverflowError) as err:
            # A task whose config or blobs do not decode (e.g. a secagg roster that is not JSON):
            # declined for that one task, instead of ending the task loop.
            reason = f"malformed task: {type(err).__name__}: {str(err)[:200]}"
            logger.warning("task refused round_id=%r kind=%r: %s", task.round_id[:64], task.kind[:64], reason)
            return pb.TaskResult(task_id=task.task_id, round_id=task.round_id, error=reason)

    def _run_task(self, task: pb.TrainTask) -> pb.TaskResult:
        reason = blocked_reason(self.config, self._conditions.current())
        x, y = self.store.load()
        if not reason and len(y) == 0:
            reason = "no local training data"
        if reason:
            logger.info("task declined round_id=%s: %s", task.round_id, reason)
            return pb.TaskResult(task_id=task.task_id, round_id=task.round_id, error=reason)
        names = [t.name for t in task.arrays]
        weights = [tensor_from_proto(t, max_bytes=self.config.max_task_bytes) for t in task.arrays]
        config = config_from_proto(dict(task.config))
        if task.kind.startswith("train.secagg_"):
            return self._secagg(task, names, weights, config, (x, y))
        if task.kind == "evaluate":
            loss, acc = trainer.evaluate(weights, x, y)
            return pb.TaskResult(
                task_id=task.task_id,
                round_id=task.round_id,
                num_examples=len(y),
                metrics={"loss": loss, "accuracy": acc},
            )
        return self._train(task, names, weights, config, (x, y))

    def _train(
        self,
        task: pb.TrainTask,
        names: list[str],
        weights: list[np.ndarray],
        config: dict[str, float | str | bool | bytes],
        data: tuple[np.ndarray, np.ndarray],
    ) -> pb.TaskResult:
        x, y = data
        sigma = num(config, "dp-noise-multiplier", 0.0)
        if sigma > 0 and self.ledger.would_exceed(sigma):
            return pb.TaskResult(
                task_id=task.task_id,
                round_id=task.round_id,
                error=f"privacy budget exhausted: eps {self.ledger.spent():.2f}"
                f" of {self.ledger.budget_epsilon}",
            )
        params = trainer.TrainParams(
            lr=num(config, "lr", 0.1),
            epochs=int(num(config, "local-epochs", 1)),
            batch_size=int(num(config, "batch-size", 32)),
            proximal_mu=num(config, "proximal-mu", 0.0),
            seed=int(num(config, "seed", 0)) + task.server_round,
        )
        new, loss = self._train_fn(weights, x, y, params)
        metrics = {"train_loss": loss}
        flower_clip = num(
            config, "clipping_norm", 0.0
        )  # Flower's client-side fixed clipping (fixedclipping_mod)
        if flower_clip > 0:
            new, norm = clip_and_noise(
                weights, new, clip=flower_clip, noise_multiplier=0.0, rng=np.random.default_rng()
            )
            metrics["update_norm"] = norm
        if sigma > 0:
            rng = np.random.default_rng()
            new, norm = clip_and_noise(
                weights, new, clip=num(config, "dp-clip", 1.0), noise_multiplier=sigma, rng=rng
            )
            metrics |= {"update_norm": norm, "dp_epsilon_spent": self.ledger.charge(sigma)}
        logger.info("trained round_id=%s samples=%d loss=%.4f", task.round_id, len(y), loss)
        return pb.TaskResult(
            task_id=task.task_id,
            round_id=task.round_id,
            num_examples=len(y),
            metrics=metrics,
            arrays=[tensor_to_proto(n, w) for n, w in zip(names, new, strict=True)],
        )

    def _secagg(
        self,
        task: pb.TrainTask,
        names: list[str],
        weights: list[np.ndarray],
        config: dict[str, float | str | bool | bytes],
        data: tuple[np.ndarray, np.ndarray],
    ) -> pb.TaskResult:
        rid, stage = task.round_id, task.kind.removeprefix("train.secagg_")
        base = pb.TaskResult(task_id=task.task_id, round_id=rid)
        if stage == "keys":
            base.blobs.update(self.secagg.keys(rid))
        elif stage == "share":
            base.blobs.update(self.secagg.share(rid, blob(config, "roster")))
        elif stage == "unmask":
            base.blobs.update(self.secagg.unmask(rid, blob(config, "lists")))
        elif stage == "masked":

            def train_delta() -> tuple[list[np.ndarray], int, dict[str, float]]:
                result = self._train(task, names, weights, config, data)
                if result.error:
                    raise InvalidInputError(result.error)
                new = [tensor_from_proto(t, max_bytes=self.config.max_task_bytes) for t in result.arrays]
                deltas = [n.astype(np.float64) - w for n, w in zip(new, weights, strict=True)]
                return deltas, int(result.num_examples), dict(result.metrics)

            vec, blobs, n, metrics = self.secagg.masked(
                rid,
                blob(config, "inbox"),
                train_delta,
                clip=num(config, "secagg-clip", 1.0),
                scale=num(config, "secagg-scale", 1.0),
                max_examples=int(num(config, "secagg-max-examples", 1000)),
            )
            base.blobs.update(blobs)
            base.arrays.append(tensor_to_proto("masked", vec))
            base.num_examples = n
            base.metrics.update(metrics)
        return base
