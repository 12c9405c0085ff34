"""Labelled feedback (validation, features, sink) and the training conditions read from the system."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from agent.config import AgentConfig, DeviceConfig
from agent.errors import ConfigError, InvalidInputError, NoModelError, RequestTooLargeError
from agent.federated.client import FederatedConfig, StaticConditions, blocked_reason
from agent.federated.conditions import SystemConditions
from agent.federated.store import SampleStore
from agent.identity import Identity, IdentityStore
from agent.inference.engine import InferenceEngine, ServingOptions
from agent.inference.handle import ModelHandle, ModelHolder, ModelMeta
from agent.inference.signature import Signature, TensorSpec
from agent.inference.stats import ServingStats
from agent.serving.feedback import (
    FeedbackHandler,
    FeedbackRefusedError,
    FeedbackResult,
    num_classes,
    validate_feedback,
)

DIGITS = Signature(
    inputs=(TensorSpec("input", "float32", (None, 1, 8, 8)),),
    outputs=(TensorSpec("logits", "float32", (None, 10)),),
)
W = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)


class HeadRuntime:
    """Working `InferenceRuntime` fake: pixels -> `features` (a fixed projection) and logits."""

    backend = "fake"

    def __init__(self, *, with_features: bool = True, inputs: int = 1) -> None:
        names = ["input", "extra"][:inputs]
        outputs = [TensorSpec("features", "float32", (None, 5))] if with_features else []
        self.signature = Signature(
            inputs=tuple(TensorSpec(n, "float32", (None, 1, 8, 8)) for n in names),
            outputs=(*outputs, TensorSpec("logits", "float32", (None, 3))),
        )
        self.calls = 0

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        flat = inputs["input"].reshape(len(inputs["input"]), -1)
        features = flat @ W
        return {"features": features, "logits": features[:, :3]}

    def close(self) -> None:
        pass


def _handler(
    tmp_path: Path, runtime: HeadRuntime | None, *, sink: bool = True
) -> tuple[FeedbackHandler, SampleStore]:
    holder = ModelHolder()
    if runtime is not None:
        holder.swap(ModelHandle(runtime, ModelMeta("digits", "1", "current", tmp_path / "m.onnx")))
    options = ServingOptions(max_batch=8, max_request_bytes=4096)
    engine = InferenceEngine(
        holder=holder,
        loader=lambda path: HeadRuntime(),
        executor=ThreadPoolExecutor(1),
        options=options,
        stats=ServingStats(),
    )
    store = SampleStore(tmp_path / "samples.db")
    return FeedbackHandler(engine=engine, holder=holder, options=options, sink=store if sink else None), store


def _submit(handler: FeedbackHandler, x: np.ndarray, labels: list[int], model: str = "") -> FeedbackResult:
    return asyncio.run(handler.submit({"input": x}, labels, model_name=model))


def _pixels(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


# ---------------------------------------------------------------- validation


def _check(x: np.ndarray, labels: list[int], signature: Signature = DIGITS) -> int:
    y = np.asarray(labels, dtype=np.int64)
    return validate_feedback(signature, {"input": x}, y, max_batch=16, max_request_bytes=1 << 16)


def test_valid_feedback_returns_the_batch() -> None:
    assert _check(_pixels(3), [0, 9, 4]) == 3


@pytest.mark.parametrize(
    ("x", "labels", "problem"),
    [
        (np.zeros((2, 1, 8, 9), np.float32), [0, 1], "dim 3 must be 8"),
        (np.zeros((2, 1, 8, 8), np.float64), [0, 1], "dtype float64"),
        (np.zeros((17, 1, 8, 8), np.float32), [0] * 17, "batch size 17 exceeds the limit of 16"),
        (np.zeros((3, 1, 8, 8), np.float32), [0, 1], "2 labels given for a batch of 3 rows"),
        (np.zeros((2, 1, 8, 8), np.float32), [0, 1, 2], "3 labels given for a batch of 2 rows"),
        (np.zeros((2, 1, 8, 8), np.float32), [1, -3], "label -3 in batch row 1 is negative"),
        (np.zeros((2, 1, 8, 8), np.float32), [10, 1], "label 10 in batch row 0 is out of range"),
    ],
)
def test_invalid_feedback_names_the_problem(x: np.ndarray, labels: list[int], problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        _check(x, labels)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs_name_the_row(bad: float) -> None:
    x = _pixels(4)
    x[2, 0, 3, 3] = bad
    with pytest.raises(InvalidInputError, match=r"'input' has a non-finite value .* in batch row 2"):
        _check(x, [0, 1, 2, 3])


def test_request_over_the_byte_limit_is_too_large() -> None:
    y = np.zeros(4, np.int64)
    with pytest.raises(RequestTooLargeError):
        validate_feedback(DIGITS, {"input": _pixels(4)}, y, max_batch=16, max_request_bytes=100)


def test_classes_come_from_the_first_rank_2_output_other_than_features() -> None:
    assert num_classes(DIGITS) == 10
    assert num_classes(HeadRuntime().signature) == 3  # `features` (5 wide) is skipped
    dynamic = Signature(DIGITS.inputs, (TensorSpec("logits", "float32", (None, None)),))
    assert num_classes(dynamic) is None
    assert _check(_pixels(1), [1234], dynamic) == 1  # no upper bound when the model does not say
    assert num_classes(Signature(DIGITS.inputs, (TensorSpec("features", "float32", (None, 5)),))) is None


# ---------------------------------------------------------------- handler


def test_model_with_features_output_stores_the_embedding(tmp_path: Path) -> None:
    runtime = HeadRuntime()
    handler, store = _handler(tmp_path, runtime)
    x = _pixels(4)
    result = _submit(handler, x, [0, 2, 1, 2], model="digits")
    assert (result.accepted, result.stored_total, result.feature_source, result.feature_width) == (
        4,
        4,
        "features",
        5,
    )
    stored_x, stored_y = store.load()
    np.testing.assert_allclose(stored_x, x.reshape(4, 64) @ W, rtol=1e-6)
    assert stored_y.tolist() == [0, 2, 1, 2] and runtime.calls == 1


def test_model_without_features_stores_the_flattened_input(tmp_path: Path) -> None:
    runtime = HeadRuntime(with_features=False)
    handler, store = _handler(tmp_path, runtime)
    x = _pixels(2)
    result = _submit(handler, x, [2, 0])
    assert (result.feature_source, result.feature_width, result.meta.key) == ("input", 64, "digits@1")
    stored_x, stored_y = store.load()
    assert np.array_equal(stored_x, x.reshape(2, 64)) and stored_y.tolist() == [2, 0]
    assert runtime.calls == 0  # the model is not run when the input itself is the feature


def test_refusals_store_nothing(tmp_path: Path) -> None:
    handler, store = _handler(tmp_path, HeadRuntime())
    with pytest.raises(FeedbackRefusedError, match="serves digits@1"):
        _submit(handler, _pixels(1), [0], model="cats")
    with pytest.raises(InvalidInputError, match="out of range"):
        _submit(handler, _pixels(2), [0, 3])
    with pytest.raises(InvalidInputError, match="non-finite"):
        _submit(handler, np.full((1, 1, 8, 8), np.nan, np.float32), [0])
    assert store.count() == 0
    disabled, _ = _handler(tmp_path / "off", HeadRuntime(), sink=False)
    with pytest.raises(FeedbackRefusedError, match="federated learning is disabled on this device"):
        _submit(disabled, _pixels(1), [0])
    empty, _ = _handler(tmp_path / "empty", None)
    with pytest.raises(NoModelError):
        _submit(empty, _pixels(1), [0])


def test_model_without_features_and_two_inputs_has_nothing_to_store(tmp_path: Path) -> None:
    handler, store = _handler(tmp_path, HeadRuntime(with_features=False, inputs=2))
    with pytest.raises(FeedbackRefusedError, match="2 inputs and no 'features' output"):
        _submit(handler, _pixels(1), [0])
    assert store.count() == 0


def test_store_refuses_a_feature_width_change(tmp_path: Path) -> None:
    handler, store = _handler(tmp_path, HeadRuntime(with_features=False))
    _submit(handler, _pixels(1), [0])  # 64 pixels per sample
    handler._holder.swap(ModelHandle(HeadRuntime(), ModelMeta("digits", "2", "current", tmp_path / "b")))
    with pytest.raises(InvalidInputError, match="feature width 5 != stored width 64"):
        _submit(handler, _pixels(1), [0])
    assert store.count() == 1


def test_a_store_that_replaces_drops_the_old_feature_space_and_counts_it(tmp_path: Path) -> None:
    store = SampleStore(tmp_path / "r.db", replace_on_width_change=True)
    store.add_many(np.zeros((3, 64), np.float32), np.array([1, 2, 3]))
    assert store.add_many(np.ones((2, 5), np.float32), np.array([4, 5])) == 2
    x, y = store.load()
    assert x.shape == (2, 5) and y.tolist() == [4, 5] and store.replaced_total == 3


def test_model_swapped_mid_request_is_retryable_and_stores_nothing(tmp_path: Path) -> None:
    handler, store = _handler(tmp_path, HeadRuntime())
    validated_on = ModelHolder()  # the handler checked v2's signature; the engine still serves v1
    validated_on.swap(ModelHandle(HeadRuntime(), ModelMeta("digits", "2", "current", tmp_path / "b")))
    racing = FeedbackHandler(
        engine=handler._engine, holder=validated_on, options=ServingOptions(), sink=store
    )
    with pytest.raises(NoModelError, match="changed from digits@2 during feedback; retry"):
        _submit(racing, _pixels(1), [0])
    assert store.count() == 0


# ---------------------------------------------------------------- conditions


def _supply(root: Path, name: str, **files: str) -> None:
    (root / name).mkdir(parents=True)
    for key, value in files.items():
        (root / name / key).write_text(value + "\n")


def _power(root: Path) -> bool:
    return SystemConditions(power_supply_root=root).on_external_power()


def test_no_power_supply_class_means_mains_powered(tmp_path: Path) -> None:
    assert _power(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    assert _power(tmp_path / "empty")
    _supply(tmp_path / "usb-only", "usb", type="USB", online="0")  # no battery: external power
    assert _power(tmp_path / "usb-only")


@pytest.mark.parametrize(
    ("mains_online", "battery_status", "charging"),
    [
        ("0", "Discharging", False),
        ("1", "Discharging", True),  # e.g. a charge threshold holds it: still on mains
        ("1", "Not charging", True),
        ("0", "Charging", True),
        ("0", "Full", True),
        (None, "Discharging", False),
        (None, "Unknown", False),
    ],
)
def test_battery_device_charges_on_mains_or_while_charging(
    tmp_path: Path, mains_online: str | None, battery_status: str, charging: bool
) -> None:
    root = tmp_path / "power_supply"
    if mains_online is not None:
        _supply(root, "AC", type="Mains", online=mains_online)
    _supply(root, "BAT0", type="Battery", status=battery_status, capacity="40")
    assert _power(root) is charging


def test_unreadable_supply_is_skipped(tmp_path: Path) -> None:
    root = tmp_path / "ps"
    _supply(root, "BAT0", type="Battery", status="Discharging")
    (root / "weird").mkdir()  # no type file at all
    assert not _power(root)


def test_readings_from_load_average_config_and_update_probe(tmp_path: Path) -> None:
    updating = [False]

    def source(load: float, **kw: object) -> SystemConditions:
        return SystemConditions(
            max_load_per_cpu=0.5,
            power_supply_root=tmp_path / "none",
            loadavg=lambda: (load, 0.0, 0.0),
            cpu_count=lambda: 4,
            updating=lambda: updating[0],
            **kw,  # type: ignore[arg-type]
        )

    quiet = source(1.6).current()
    assert quiet == {
        "idle": 1.0,
        "charging": 1.0,
        "unmetered": 1.0,
        "not_updating": 1.0,
        "load_per_cpu": pytest.approx(0.4),
    }
    assert source(2.0).current()["idle"] == 0.0  # 0.5 per CPU is not below 0.5
    assert source(0.0, metered=True).current()["unmetered"] == 0.0
    updating[0] = True
    state = source(0.0).current()
    assert state["not_updating"] == 0.0
    assert blocked_reason(FederatedConfig(), state) == "not allowed to train: a model update is in progress"
    assert blocked_reason(FederatedConfig(require_not_updating=False), state) == ""


def test_unreadable_load_average_counts_as_busy(tmp_path: Path) -> None:
    def broken() -> tuple[float, float, float]:
        raise OSError("no /proc/loadavg")

    source = SystemConditions(loadavg=broken, cpu_count=lambda: None, power_supply_root=tmp_path)
    assert source.current()["idle"] == 0.0


def test_blocked_reasons_and_static_default() -> None:
    ok = StaticConditions().current()
    assert blocked_reason(FederatedConfig(), ok) == ""
    assert blocked_reason(FederatedConfig(), {**ok, "idle": 0.0}) == "not allowed to train: device not idle"
    assert blocked_reason(FederatedConfig(), {**ok, "unmetered": 0.0}).endswith("link is metered")
    missing = {k: v for k, v in ok.items() if k != "not_updating"}  # a source that does not say
    assert blocked_reason(FederatedConfig(), missing).endswith("update is in progress")


def test_condition_thresholds_in_the_federated_table() -> None:
    cfg = FederatedConfig.from_mapping(
        {"max_load_per_cpu": 1, "metered": True, "require_not_updating": False}
    )
    assert (cfg.max_load_per_cpu, cfg.metered, cfg.require_not_updating) == (1.0, True, False)
    with pytest.raises(ConfigError, match="max_load_per_cpu must be > 0"):
        FederatedConfig.from_mapping({"max_load_per_cpu": 0.0})
    with pytest.raises(ConfigError, match="metered"):
        FederatedConfig.from_mapping({"metered": "yes"})


class _Ota:
    def __init__(self, state: str) -> None:
        from agent.ota.machine import UpdateRecord
        from agent.ota.states import UpdateState

        self.record = UpdateRecord(state=UpdateState(state))


@pytest.mark.parametrize(("state", "not_updating"), [("idle", 1.0), ("committed", 1.0), ("downloading", 0.0)])
def test_daemon_binds_not_updating_to_the_ota_record(tmp_path: Path, state: str, not_updating: float) -> None:
    from agent.daemon import _build_federated

    config = AgentConfig(device=DeviceConfig(data_dir=str(tmp_path)), federated={"max_load_per_cpu": 1e9})
    identity = Identity("dev", b"", b"", b"", "")
    client = _build_federated(config, IdentityStore(tmp_path), identity, "localhost:1", _Ota(state))  # type: ignore[arg-type]
    assert client is not None
    assert isinstance(client._conditions, SystemConditions)
    assert client._conditions.current()["not_updating"] == not_updating
    disabled = AgentConfig(device=DeviceConfig(data_dir=str(tmp_path)), federated={"enabled": False})
    assert _build_federated(disabled, IdentityStore(tmp_path), identity, "localhost:1", None) is None


# ---------------------------------------------------------------- CLI


def test_cli_feedback_reads_npz_and_refuses_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agent.cli import build_parser

    ns = build_parser().parse_args(["feedback", "--npz", str(tmp_path / "none.npz"), "--json"])
    assert isinstance(ns, argparse.Namespace) and ns.batch_rows == 256 and ns.socket is None
    assert ns.func(ns) == 2
    assert "cannot read x and y" in capsys.readouterr().err
    np.savez(tmp_path / "no_y.npz", x=np.zeros((2, 64)))
    ns = build_parser().parse_args(["feedback", "--npz", str(tmp_path / "no_y.npz")])
    assert ns.func(ns) == 2


@pytest.mark.parametrize(
    ("x", "y", "problem"),
    [
        (np.zeros((3, 64), np.float32), np.zeros(2, np.int64), "one label per row"),
        (np.zeros((0, 64), np.float32), np.zeros(0, np.int64), "no rows to send"),
        (np.zeros((2, 64), np.float32), np.zeros(2, np.float32), "labels must be integers"),
    ],
)
def test_feedback_client_checks_the_data_set_before_connecting(
    tmp_path: Path, x: np.ndarray, y: np.ndarray, problem: str
) -> None:
    from agent.serving.feedback_client import send_feedback

    with pytest.raises(InvalidInputError, match=problem):
        send_feedback(tmp_path / "no-agent.sock", x, y)
