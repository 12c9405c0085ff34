"""Input/output signatures of a loaded model and the validation of a request against them.

Owns the `TensorSpec`/`Signature` value types and `validate_inputs`, which turns a mismatch into an
`InvalidInputError` whose message names the whole expected signature. Does not load models or convert
tensors to or from the wire format (that is `agent.serving.codec`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent.errors import InvalidInputError

# Shapes use None for a dynamic dimension (dimension 0 is the batch when it is dynamic).
Shape = tuple[int | None, ...]


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature: numpy dtype name (e.g. ``"float32"``) and shape."""

    name: str
    dtype: str
    shape: Shape

    @functools.cached_property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class Signature:
    """The inputs and outputs of a model, in the order the runtime declares them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def describe(self) -> str:
        ins = ", ".join(s.describe() for s in self.inputs)
        outs = ", ".join(s.describe() for s in self.outputs)
        return f"({ins}) -> ({outs})"

    @property
    def dynamic_batch(self) -> bool:
        """True when every input's first dimension is dynamic (requests can be concatenated)."""
        return all(s.shape and s.shape[0] is None for s in self.inputs)

    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)


def validate_inputs(
    signature: Signature, inputs: Mapping[str, np.ndarray], *, max_batch: int | None = None
) -> int:
    """Check names, dtypes, ranks, fixed dimensions and a common batch size.

    Args:
        signature: the model's signature.
        inputs: the request, by input name.
        max_batch: refuse batches larger than this (None: no limit).

    Returns:
        The batch size (first dimension) shared by all inputs.

    Raises:
        InvalidInputError: any mismatch; the message names the expected signature.
    """
    expected = set(signature.input_names())
    if set(inputs) != expected:
        _fail(signature, f"inputs {sorted(inputs)} given, expected {sorted(expected)}")
    batches: set[int] = set()
    for spec in signature.inputs:
        array = inputs[spec.name]
        if array.dtype != spec.np_dtype:
            _fail(signature, f"input {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}")
        if array.ndim != len(spec.shape):
            _fail(
                signature,
                f"input {spec.name!r} has shape {list(array.shape)}, expected rank {len(spec.shape)}",
            )
        for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if want is not None and got != want:
                _fail(
                    signature, f"input {spec.name!r} has shape {list(array.shape)}, dim {axis} must be {want}"
                )
        if array.ndim:
            batches.add(int(array.shape[0]))
    if len(batches) > 1:
        _fail(signature, f"inputs disagree on the batch size: {sorted(batches)}")
    batch = batches.pop() if batches else 1
    if batch < 1:
        _fail(signature, "batch size must be at least 1")
    if max_batch is not None and batch > max_batch:
        _fail(signature, f"batch size {batch} exceeds the limit of {max_batch}")
    return batch


def _fail(signature: Signature, problem: str) -> None:
    raise InvalidInputError(f"{problem}; expected signature {signature.describe()}")
