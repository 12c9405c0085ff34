"""SecAgg+ crypto agrees bit for bit between the agent and the server, and versions are checked.

The mask PRG is pinned to the ChaCha20 known-answer vector (RFC 8439, all-zero key and nonce), so
a faster expansion can never silently change the masks devices already produce; block-wise
in-place masking equals adding whole keystreams, also split over threads that start keystreams
mid-way; the v2 upload MAC verifies across the two copies and fails on any change, and the
server's MAC-checked sum adds an upload only when its tag verifies; a device of another protocol
version is left out of the round (counted, the round still completes) and an agent refuses a
server of another version.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.supercore.task_identity import TaskIdentity

from agent.errors import InvalidInputError
from agent.federated import secagg_crypto as ac
from agent.federated.secagg import SecAggClient
from bench.federated.secagg_cost import DirectGrid
from fleet_server.federated import secagg_crypto as sc
from fleet_server.federated.secagg import SecAggParams, SecAggRound
from fleet_server.federated.strategy import StrategySpec, make_strategy
from protos.edgeloop.v1 import federated_pb2 as pb

# RFC 8439 / RFC 7539 A.1 test vector #1: ChaCha20 block, key 0^32, nonce 0^12, counter 0
KAT = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)
B = sc.BLOCK_WORDS


def test_prg_is_the_chacha20_keystream_on_both_sides() -> None:
    for prg in (sc.prg, ac.prg):
        words = prg(b"\0" * 32, 16)
        assert words.dtype == np.uint32 and words.astype("<u4").tobytes() == KAT


@pytest.mark.parametrize("length", [1, 5, B - 1, B, B + 1, 3 * B + 7])
def test_block_wise_masking_equals_whole_keystreams_on_both_sides(length: int) -> None:
    rng = np.random.default_rng(length)
    base = rng.integers(0, 2**32, length, dtype=np.uint32)
    masks = [(rng.bytes(32), bool(rng.integers(2))) for _ in range(5)]
    expected = base.copy()
    for seed, add in masks:
        expected = expected + sc.prg(seed, length) if add else expected - sc.prg(seed, length)
    for side in (sc, ac):
        got = base.copy()
        side.apply_masks(got, masks)
        assert np.array_equal(got, expected)
    back = expected.copy()  # the server removes exactly what the device added
    sc.apply_masks(back, [(seed, not add) for seed, add in masks])
    assert np.array_equal(back, base)
    total = np.zeros(length, np.uint32)  # the server's sum of uploads, unmasked in the same pass
    sc.apply_masks(total, [(seed, not add) for seed, add in masks], plus=[expected, base])
    assert np.array_equal(total, base + base)
    with pytest.raises(ValueError):
        sc.apply_masks(base.astype(np.int64), masks)


@pytest.mark.parametrize("length", [1, 2 * B - 1, 2 * B + 5, 4 * B + 17])
@pytest.mark.parametrize("threads", [2, 3, 4])
def test_threaded_masking_equals_one_thread(length: int, threads: int) -> None:
    rng = np.random.default_rng(length + threads)
    base = rng.integers(0, 2**32, length, dtype=np.uint32)
    masks = [(rng.bytes(32), bool(rng.integers(2))) for _ in range(4)]
    plus = [rng.integers(0, 2**32, length, dtype=np.uint32)]
    expected = base + plus[0]
    for seed, add in masks:
        expected = expected + sc.prg(seed, length) if add else expected - sc.prg(seed, length)
    got = base.copy()
    sc.apply_masks(got, masks, plus=plus, threads=threads)
    assert np.array_equal(got, expected)
    spans = sc._spans(length, threads)  # a thread starts each keystream mid-way, on a ChaCha20 block
    assert spans[0][0] == 0 and spans[-1][1] == length and len(spans) == min(threads, max(1, length // B))
    assert all(lo % sc.CHACHA_BLOCK_WORDS == 0 and lo < hi for lo, hi in spans)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_keystream_started_on_a_later_block_is_the_rest_of_the_stream() -> None:
    seed = bytes(range(32))
    whole = sc.prg(seed, 10 * sc.CHACHA_BLOCK_WORDS)
    for start in (sc.CHACHA_BLOCK_WORDS, 7 * sc.CHACHA_BLOCK_WORDS):
        part = np.empty(len(whole) - start, np.uint32)
        sc._keystream(seed, start).update_into(bytes(part.nbytes), part.data.cast("B"))
        assert np.array_equal(part, whole[start:])


def test_mac_checked_sum_adds_only_authentic_uploads() -> None:
    key, rng = b"k" * 32, np.random.default_rng(3)
    vec = rng.integers(0, 2**32, 2 * B + 9, dtype=np.uint32)
    start = rng.integers(0, 2**32, len(vec), dtype=np.uint32)
    total, tag = start.copy(), ac.mac(key, "r:1", 7, vec)
    assert sc.add_if_authentic(total, vec, tag, key=key, round_id="r:1", index=7)
    assert np.array_equal(total, start + vec)
    changed = vec.copy()
    changed[-1] ^= 1  # in the last block: the sum was already updated when the tag fails
    for args in ((changed, tag), (vec, tag[:-1] + bytes([tag[-1] ^ 1])), (vec, tag[:31]), (vec[:-1], tag)):
        assert not sc.add_if_authentic(total, *args, key=key, round_id="r:1", index=7)
        assert np.array_equal(total, start + vec)  # left exactly as it was
    assert not sc.add_if_authentic(total, vec, tag, key=key, round_id="r:1", index=8)
    assert not sc.add_if_authentic(total, vec, tag, key=key, round_id="r:2", index=7)
    assert not sc.add_if_authentic(total, vec, tag, key=b"j" * 32, round_id="r:1", index=7)
    assert np.array_equal(total, start + vec)
    with pytest.raises(ValueError):
        sc.add_if_authentic(total.astype(np.int64), vec, tag, key=key, round_id="r:1", index=7)


def test_upload_mac_verifies_across_sides_and_fails_on_any_change() -> None:
    key, vec = b"k" * 32, np.arange(1000, dtype=np.uint32)
    tag, again = ac.mac(key, "r:1", 7, vec), ac.mac(key, "r:1", 7, vec)
    assert len(tag) == sc.MAC_BYTES and tag != again  # a fresh one-time key per upload
    assert sc.mac_ok(key, "r:1", 7, vec, tag) and sc.mac_ok(key, "r:1", 7, vec.tobytes(), again)
    changed = vec.copy()
    changed[999] ^= 1
    assert not sc.mac_ok(key, "r:1", 7, changed, tag)
    assert not sc.mac_ok(key, "r:2", 7, vec, tag)
    assert not sc.mac_ok(key, "r:1", 8, vec, tag)
    assert not sc.mac_ok(b"j" * 32, "r:1", 7, vec, tag)
    assert not sc.mac_ok(key, "r:1", 7, vec, tag[:-1] + bytes([tag[-1] ^ 1]))
    assert not sc.mac_ok(key, "r:1", 7, vec, tag[:31])


def test_fixed_point_encoding_is_unchanged_and_round_trips() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(0, 3, 5000), [-5.0, 5.0, -4.0, 4.0, 0.0, -1e-12]])
    clip, scale = 4.0, (2**31 - 1) / (4.0 * 100 * 10)
    q = np.rint(np.clip(values, -clip, clip) * scale).astype(np.int64)  # the version-1 definition
    expected = (q & 0xFFFFFFFF).astype(np.uint32)
    assert np.array_equal(ac.encode_fixed(values.copy(), clip=clip, scale=scale), expected)
    out = np.empty(len(values), np.uint32)
    ac.encode_fixed(values.copy(), clip=clip, scale=scale, out=out)
    assert np.array_equal(out, expected)
    back = sc.decode_fixed(expected, scale=scale)
    assert np.max(np.abs(back - np.clip(values, -clip, clip))) <= 0.5 / scale + 1e-15


def test_agent_refuses_a_server_of_another_version() -> None:
    client = SecAggClient()
    keys = client.keys("r")
    assert keys["v"] == str(ac.VERSION).encode()
    for roster in (b'{"me": 1, "t": 2, "server_pk": "00", "neighbours": {}}', b'{"v": 1, "me": 1}'):
        with pytest.raises(InvalidInputError, match=f"version 1 asked by the server.*version {ac.VERSION}"):
            client.share("r", roster)
    with pytest.raises(InvalidInputError, match="not a JSON object"):
        client.share("r", b"[1, 2]")


class _OldAgents(DirectGrid):
    """Devices in `old` answer the keys stage as a version-1 agent does (no version blob)."""

    def __init__(self, deltas: dict[int, np.ndarray], old: set[int]) -> None:
        super().__init__(deltas, set())
        self.old = old

    def _device(self, node: int, task: pb.TrainTask) -> pb.TaskResult:
        res = super()._device(node, task)
        if node in self.old and task.kind == "train.secagg_keys":
            del res.blobs["v"]
        return res


def test_server_leaves_out_devices_of_another_version_and_still_aggregates(
    caplog: pytest.LogCaptureFixture,
) -> None:
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 0
    rng = np.random.default_rng(2)
    deltas = {node: rng.normal(0, 0.01, 300).astype(np.float32) for node in range(2, 14)}
    grid = _OldAgents(deltas, old={3, 9})
    strategy = make_strategy(StrategySpec(name="fedavg", min_nodes=len(deltas)))
    model = ArrayRecord({"w": Array(np.zeros(300, np.float32))})
    messages = list(strategy.configure_train(1, model, ConfigRecord({}), grid))
    params = SecAggParams(clip=0.1, max_examples=100, max_clients=100)
    out = SecAggRound(grid, params, "1:1").run(messages)
    assert out.rejected["secagg_version"] == 2 and "speaks protocol version 1" in caplog.text
    assert sorted(out.node_of[i] for i in out.survivors) == sorted(set(deltas) - {3, 9})
    assert out.mean_delta is not None
    exact = np.mean([d.astype(np.float64) for n, d in deltas.items() if n not in {3, 9}], axis=0)
    assert float(np.max(np.abs(out.mean_delta - exact))) <= out.error_bound
