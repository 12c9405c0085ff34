"""The framed data plane v2 (raw tensors, shared memory) on a real InferenceService with the digits
CNN: same answers as gRPC, and malformed frames, wrong dtypes and oversize inputs get the same
status codes as before, inline and through shared memory."""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent.client import EdgeloopClient
from agent.errors import BackendCrashedError, InferenceError, InvalidInputError, RequestTooLargeError
from agent.inference.engine import ServingOptions
from agent.profile import load_profile
from agent.serving import rawframe
from agent.serving.background import BackgroundService
from agent.serving.server import InferenceService
from tests.fixtures.models import DigitsModels, digits_models
from tests.integration.test_inference_api import CrashingLoader

LIMIT = 64 * 1024  # max_request_bytes; the frame limit is this + 1 MiB
OK = 0
INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
TOO_LARGE = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@pytest.fixture(scope="module")
def models() -> DigitsModels:
    return digits_models()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, models: DigitsModels) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("framed")
    options = ServingOptions(max_batch=64, max_request_bytes=LIMIT)
    service = InferenceService(
        tmp / "slots", load_profile("generic-x86"), tmp / "api.sock", options=options,
        fast_socket_path=tmp / "fast.sock",
    )  # fmt: skip
    with BackgroundService(service) as bg:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="7"))
        yield tmp


def _client(agent: Path, shm_min_bytes: int | None) -> EdgeloopClient:
    return EdgeloopClient(agent / "api.sock", fast_socket=agent / "fast.sock", shm_min_bytes=shm_min_bytes)


def _frame(kind: int, pairs: list[tuple[str, np.ndarray]], *, tamper: bytes | None = None) -> bytes:
    meta, pieces, data_len = rawframe.pack_tensors(pairs)
    meta = tamper if tamper is not None else meta
    head = rawframe.header(kind, count=len(pairs), meta_len=len(meta), data_len=data_len)
    return head + meta + b"".join(bytes(p) for p in pieces)


def _ask(sock: socket.socket, frame: bytes) -> tuple[int, bytes]:
    sock.sendall(frame)
    head = sock.recv(rawframe.HEADER.size, socket.MSG_WAITALL)
    magic, status, _, _, meta_len, data_len = rawframe.HEADER.unpack(head)
    assert magic == rawframe.MAGIC
    body = sock.recv(meta_len + data_len, socket.MSG_WAITALL) if meta_len + data_len else b""
    return status, body[meta_len:]


@pytest.mark.parametrize("shm", [None, 0], ids=["inline", "shared-memory"])
def test_same_answers_and_status_codes_inline_and_through_shared_memory(
    agent: Path, models: DigitsModels, shm: int | None
) -> None:
    before = set(os.listdir("/dev/shm"))
    with _client(agent, shm) as client:
        answer = client.predict_full(models.data.x_test[:40])
        assert answer.model_name == "digits" and answer.model_version == "7"
        assert np.abs(answer.outputs["logits"] - models.reference_logits[:40]).max() <= 1e-4
        with pytest.raises(InvalidInputError, match=r"INVALID_ARGUMENT.*dtype float64, expected float32"):
            client.predict(models.data.x_test[:1].astype(np.float64))
        with pytest.raises(RequestTooLargeError, match=r"RESOURCE_EXHAUSTED.*the limit is 65536"):
            client.predict(np.zeros((60, 1, 16, 32), np.float32))
        with pytest.raises(InvalidInputError, match="unsupported dtype complex64"):
            client.predict(np.zeros((1, 1, 8, 8), np.complex64))
        again = client.predict_all({"input": models.data.x_test[:3]})  # the connection still works
        assert np.abs(again["logits"] - models.reference_logits[:3]).max() <= 1e-4
    assert {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("edgeloop-")} == set()


def test_malformed_frames_are_invalid_argument_and_the_connection_survives(
    agent: Path, models: DigitsModels
) -> None:
    x = models.data.x_test[:1]
    good = _frame(rawframe.PREDICT, [("input", x)])
    meta, _, _ = rawframe.pack_tensors([("input", x)])
    unknown_dtype = bytes([99]) + meta[1:]
    past_end = meta[:4] + struct.pack("<Q", 1 << 20) + meta[12:]
    negative = meta[:12] + struct.pack("<q", -1) + meta[20:]
    bad_name = rawframe.pack_str("../etc/passwd") + bytes(8)
    cases = {
        "truncated tensor descriptor": _frame(rawframe.PREDICT, [("input", x)], tamper=meta[:7]),
        "unknown dtype": _frame(rawframe.PREDICT, [("input", x)], tamper=unknown_dtype),
        "needs 256 bytes at offset 1048576": _frame(rawframe.PREDICT, [("input", x)], tamper=past_end),
        "negative dimension": _frame(rawframe.PREDICT, [("input", x)], tamper=negative),
        "unknown kind 7": _frame(7, [("input", x)]),
        "PREDICT_SHM before ATTACH_SHM": _frame(rawframe.PREDICT_SHM, [("input", x)]),
        "shared memory name": rawframe.header(rawframe.ATTACH_SHM, meta_len=len(bad_name)) + bad_name,
    }  # fmt: skip
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(str(agent / "fast.sock"))
        for expected, frame in cases.items():
            status, message = _ask(sock, frame)
            assert (status, expected in message.decode()) == (INVALID, True), (expected, message)
            assert _ask(sock, good)[0] == OK
        # a frame over the limit: RESOURCE_EXHAUSTED, then the connection is closed
        status, message = _ask(sock, rawframe.header(rawframe.PREDICT, count=1, data_len=10 * 2**20))
        assert status == TOO_LARGE and b"exceeds the limit" in message
        assert sock.recv(1) == b""


def test_shared_memory_is_bounded_and_checked_against_the_segment(agent: Path, models: DigitsModels) -> None:
    name = f"edgeloop-test-{os.getpid()}"
    path = Path("/dev/shm") / name
    x = models.data.x_test[:2]
    path.write_bytes(x.tobytes() + bytes(4096))
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(agent / "fast.sock"))
            attach = rawframe.pack_str(name) + struct.pack("<Q", 64 * 2**20)
            status, message = _ask(sock, rawframe.header(rawframe.ATTACH_SHM, meta_len=len(attach)) + attach)
            assert status == TOO_LARGE and b"exceeds the limit" in message  # larger than a frame may be
            attach = rawframe.pack_str(name) + struct.pack("<Q", path.stat().st_size)
            assert _ask(sock, rawframe.header(rawframe.ATTACH_SHM, meta_len=len(attach)) + attach)[0] == OK
            meta, _, _ = rawframe.pack_tensors([("input", x)])  # offset 0: the tensor is in the segment
            status, _ = _ask(sock, rawframe.header(rawframe.PREDICT_SHM, count=1, meta_len=len(meta)) + meta)
            assert status == OK
            past = meta[:4] + struct.pack("<Q", 4100) + meta[12:]  # 512 bytes at 4100 of 4608: past the end
            status, message = _ask(
                sock, rawframe.header(rawframe.PREDICT_SHM, count=1, meta_len=len(past)) + past
            )
            assert status == INVALID and b"the frame carries 4608" in message
    finally:
        path.unlink()


def test_a_new_client_against_a_v1_agent_gets_a_clear_error(tmp_path: Path) -> None:
    """An agent still speaking v1 reads our magic as a huge length and answers in v1 framing."""
    path = tmp_path / "old.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    def old_agent() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(4)
            message = b"request of 38161477 bytes exceeds the limit of 17825792 bytes"
            conn.sendall(struct.pack("<IB", len(message), TOO_LARGE) + message)

    thread = threading.Thread(target=old_agent)
    thread.start()
    with (
        EdgeloopClient(tmp_path / "unused.sock", fast_socket=path) as client,
        pytest.raises(InferenceError, match=r"framed protocol v1 .*upgrade the agent"),
    ):
        client.predict(np.zeros((1, 1, 8, 8), np.float32))
    thread.join(5)
    server.close()


def test_a_backend_crash_under_a_framed_request_is_restarted_and_the_request_retried(
    tmp_path: Path, models: DigitsModels
) -> None:
    """A cheap model runs inline (no executor hop); when its backend fails there, the restart and
    the retried call suspend the request, and the framed client still gets its answer."""
    profile = load_profile("generic-x86")
    loader = CrashingLoader(profile)
    options = ServingOptions(restart_min_interval_s=0.0)
    service = InferenceService(
        tmp_path / "slots", profile, tmp_path / "api.sock", options=options, loader=loader,
        fast_socket_path=tmp_path / "fast.sock",
    )  # fmt: skip
    x = models.data.x_test
    with BackgroundService(service) as bg, _client(tmp_path, None) as client:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1"))
        for i in range(20):  # measured as cheap: run inline from now on
            client.predict(x[i : i + 1])
        loader.crashes[0] = 1
        y = client.predict(x[:4])
        assert (y.argmax(1) == models.reference_logits[:4].argmax(1)).all()
        loader.crashes[0] = 10**6
        with pytest.raises(BackendCrashedError, match="INTERNAL: injected backend failure"):
            client.predict(x[:1])
        loader.crashes[0] = 0
        assert client.predict_full(x[:1]).model_version == "1"
        stats = service.stats_snapshot()
    assert stats["inference.digits@1.restarts"] == 2
    assert stats["inference.digits@1.errors.backend_crashed"] == 1


def test_micro_batched_requests_from_many_connections_get_their_own_answers(
    tmp_path: Path, models: DigitsModels
) -> None:
    """With micro-batching every framed request waits for the batcher (the connection reads nothing
    more meanwhile); concurrent framed clients each get the rows they sent, none lost or doubled."""
    options = ServingOptions(micro_batch=True, micro_batch_max=32, micro_batch_wait_s=0.002)
    service = InferenceService(
        tmp_path / "slots", load_profile("generic-x86"), tmp_path / "api.sock", options=options,
        fast_socket_path=tmp_path / "fast.sock",
    )  # fmt: skip
    failures: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            with _client(tmp_path, None) as client:
                for i in range(offset, offset + 30):
                    y = client.predict(models.data.x_test[i : i + 1])
                    assert np.abs(y - models.reference_logits[i : i + 1]).max() <= 1e-4
        except BaseException as err:
            failures.append(err)

    with BackgroundService(service) as bg:
        bg.call(lambda: service.install(models.onnx_fp32, name="digits", version="1"))
        threads = [threading.Thread(target=worker, args=(30 * k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stats = service.stats_snapshot()
    assert failures == []
    assert stats["inference.digits@1.requests"] == 6 * 30
