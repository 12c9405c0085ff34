"""Update behaviour of simulated devices: what a device does with a `DesiredState` assignment.

A device walks the agent's OTA state machine (the transition list of tests/helpers/simfleet.py,
imported, not copied) and reports each transition as `ota` telemetry in the agent's JSON
(agent/ota/client.py); while it serves a model it sends `model_metrics` windows built by
simfleet's `window_record` from a `Behaviour`. Behaviours here are synthetic (no real model is
profiled: a light device cannot run one), per kind:

- good: loads, ~93 % top-1 accuracy, confident;
- failing: does not load; the install fails at staging (`stage_failed`) and the device keeps
  serving what it had;
- silently_bad: loads and commits, but is wrong half the time while staying confident (agreement
  with the previous model ~0.5, class mix shifted): only the rollout gates can catch it.

Which kind a device is: `SimConfig.update` (a mix over the fleet), overridden per model version
by `SimConfig.update_by_version`. Pure except for the random generator passed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from functools import cache

import numpy as np

from agent.ota.states import UpdateEvent, UpdateState
from protos.edgeloop.v1 import device_pb2 as pb
from tests.helpers.simfleet import _INSTALL as INSTALL_STEPS
from tests.helpers.simfleet import NOISE_LEVELS, Behaviour, InputPool, Site, make_site, window_record

__all__ = [
    "INSTALL_STEPS",
    "Behaviour",
    "UpdateEvent",
    "UpdateState",
    "behaviour_for",
    "make_site_for",
    "ota_payload",
    "pick_kind",
    "window_record",
]

POOL_SIZE = 200


@cache
def pool() -> InputPool:
    y = np.arange(POOL_SIZE) % 10
    return InputPool(np.zeros((len(NOISE_LEVELS), POOL_SIZE, 1, 1, 1), np.float32), y)


@cache
def _template(kind: str) -> Behaviour:
    rng = np.random.default_rng({"good": 1, "failing": 2, "silently_bad": 3}[kind])
    levels = len(NOISE_LEVELS)
    y = pool().y
    if kind == "failing":
        empty = np.zeros((levels, POOL_SIZE))
        return Behaviour(kind, "", "", False, empty, empty.astype(int))
    accuracy = [0.97, 0.95, 0.92, 0.88] if kind == "good" else [0.5, 0.48, 0.45, 0.42]
    cls = np.empty((levels, POOL_SIZE), int)
    conf = np.empty((levels, POOL_SIZE))
    for lv in range(levels):
        right = rng.random(POOL_SIZE) < accuracy[lv]
        wrong = (y + rng.integers(1, 10, POOL_SIZE)) % 10
        cls[lv] = np.where(right, y, wrong)
        conf[lv] = np.clip(rng.beta(12, 1.5, POOL_SIZE), 0.1, 0.999)
    return Behaviour(kind, "", "", True, conf, cls)


def behaviour_for(kind: str, model_name: str, model_version: str) -> Behaviour:
    sha = hashlib.sha256(f"{model_name}@{model_version}:{kind}".encode()).hexdigest()
    return dataclasses.replace(_template(kind), name=model_name, version=model_version, sha256=sha)


def make_site_for(rng: np.random.Generator) -> Site:
    return make_site(pool(), rng, rate=5.0)


def pick_kind(mix: dict[str, float], u: float) -> str:
    """The kind whose cumulative share covers `u` in [0, 1)."""
    acc = 0.0
    for kind, share in sorted(mix.items()):
        acc += share
        if u < acc:
            return kind
    return sorted(mix)[-1]


def ota_payload(
    a: pb.ModelAssignment,
    transition: int,
    src: UpdateState,
    event: UpdateEvent,
    dst: UpdateState,
    detail: str,
) -> bytes:
    release_seq = int(a.release_id) if a.release_id.isdigit() and len(a.release_id) < 19 else 0
    return json.dumps({
        "deployment_id": a.deployment_id, "release_seq": release_seq, "transition": transition,
        "from": str(src), "to": str(dst), "event": str(event), "detail": detail,
    }).encode()  # fmt: skip
