"""Input/output signatures of a loaded model and the validation of a request against them.

Owns the `TensorSpec`/`Signature` value types, which inputs are *batched* (`infer_batched`,
`parse_batched_override`, `Signature.with_batched`) and `validate_inputs`, which turns a mismatch into
an `InvalidInputError` whose message names the whole expected signature.

Batched inputs: an input is batched when its first axis is the sample axis that requests may grow
and micro-batching may concatenate. Read from the model where it can be: a 0-d input, or an input whose
first axis is fixed, is not batched; among inputs whose first axis is dynamic, those that share the
batch dimension (by symbolic name when the runtime reports one) are. A model can say it explicitly
with the metadata key ``edgeloop.batched_inputs`` (comma-separated input names; empty: none), which
wins over the inference. Non-batched inputs (a recurrent state, a 0-d sample rate) are passed whole
with every call: only batched inputs must agree on the batch size. Does not load models or convert
tensors to or from the wire format (that is `agent.serving.codec`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from agent.errors import InvalidInputError

# Shapes use None for a dynamic dimension (dimension 0 is the batch for batched inputs).
Shape = tuple[int | None, ...]

BATCHED_INPUTS_KEY = "edgeloop.batched_inputs"  # model metadata (ONNX metadata_props, TFLite metadata)
_BATCH_NAME = re.compile(r"batch|^n$|^b$|^N$", re.IGNORECASE)


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature: numpy dtype name (e.g. ``"float32"``) and shape."""

    name: str
    dtype: str
    shape: Shape
    batched: bool | None = None  # None: not declared, decided from the shape (first dim dynamic)
    # Symbolic names of the dimensions when the runtime reports them (None: fixed or unnamed).
    dim_names: tuple[str | None, ...] = ()

    @functools.cached_property
    def is_batched(self) -> bool:
        """Whether the first axis is the sample axis (declared, else: rank >= 1 and dim 0 dynamic)."""
        if self.batched is not None:
            return self.batched and len(self.shape) > 0
        return bool(self.shape) and self.shape[0] is None

    @functools.cached_property
    def np_dtype(self) -> np.dtype[Any]:
        return np.dtype(self.dtype)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        unbatched = " (not batched)" if self.batched is False and self.shape else ""
        return f"{self.name}: {self.dtype}[{dims}]{unbatched}"


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
        """True when every input is batched with a dynamic first axis (requests can be concatenated).

        A model with any non-batched input (a recurrent state, a 0-d scalar) is never micro-batched:
        its non-batched inputs belong to one caller and cannot be joined with another's.
        """
        return bool(self.inputs) and all(s.is_batched and s.shape[0] is None for s in self.inputs)

    @functools.cached_property
    def batch_axis_checks(self) -> tuple[tuple[str, int, str], ...]:
        """(input, axis, symbol) of non-batched inputs whose axis carries the batch's symbolic name
        (a state ``[2, batch, 8]``): that axis must equal the request's batch, so a mismatch is the
        caller's error, not a runtime failure that restarts the backend."""
        symbols = {s.dim_names[0] for s in self.inputs if s.is_batched and s.dim_names and s.dim_names[0]}
        if len(symbols) != 1:
            return ()
        symbol = symbols.pop()
        return tuple(
            (spec.name, axis, symbol)
            for spec in self.inputs
            if not spec.is_batched
            for axis, name in enumerate(spec.dim_names)
            if name == symbol
        )

    @property
    def batched_inputs(self) -> tuple[str, ...]:
        """Names of the batched inputs, in signature order."""
        return tuple(s.name for s in self.inputs if s.is_batched)

    @property
    def stateful(self) -> bool:
        """True when some input is not batched (passed whole with each call)."""
        return any(not s.is_batched for s in self.inputs)

    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    def with_batched(self, names: Iterable[str]) -> Signature:
        """This signature with exactly `names` declared batched (all other inputs not batched).

        Raises:
            ValueError: a name is not an input, or names a 0-d input.
        """
        wanted = set(names)
        unknown = wanted - set(self.input_names())
        if unknown:
            raise ValueError(f"batched inputs {sorted(unknown)} are not inputs of {self.describe()}")
        scalars = [s.name for s in self.inputs if s.name in wanted and not s.shape]
        if scalars:
            raise ValueError(f"0-d inputs {scalars} cannot be batched")
        inputs = tuple(replace(s, batched=s.name in wanted) for s in self.inputs)
        return Signature(inputs=inputs, outputs=self.outputs)


def infer_batched(
    specs: Sequence[TensorSpec], first_dims: Mapping[str, str | None] | None = None
) -> set[str]:
    """Which inputs are batched, read from their shapes (and symbolic first-dimension names).

    Candidates have rank >= 1 and a dynamic first axis. When the runtime names the symbolic first
    dimensions (`first_dims`: input -> name, None when unnamed) and candidates disagree, the batch is
    the name that says so (``batch*``, ``N``, ``B``), else the most common one; unnamed dynamic first
    axes join it. A 0-d input and an input whose first axis is fixed are never batched.
    """
    candidates = [s.name for s in specs if s.shape and s.shape[0] is None]
    names = {n: (first_dims or {}).get(n) for n in candidates}
    symbols = [v for v in names.values() if v]
    if len(set(symbols)) <= 1:
        return set(candidates)
    by_name = [v for v in dict.fromkeys(symbols) if _BATCH_NAME.search(v)]
    batch = by_name[0] if by_name else max(dict.fromkeys(symbols), key=symbols.count)
    return {n for n, v in names.items() if v is None or v == batch}


def parse_batched_override(value: str) -> set[str]:
    """``"a, b"`` -> {"a", "b"}; ``""`` -> set() (the model declares no batched input)."""
    return {part.strip() for part in value.split(",") if part.strip()}


def declare_batched(
    specs: Sequence[TensorSpec],
    *,
    first_dims: Mapping[str, str | None] | None = None,
    override: str | None = None,
    source: str = "model metadata",
) -> tuple[TensorSpec, ...]:
    """`specs` with `batched` set: from `override` (``edgeloop.batched_inputs``) or `infer_batched`.

    Raises:
        ValueError: the override names an unknown or 0-d input (`source` says where it came from).
    """
    if override is None:
        batched = infer_batched(specs, first_dims)
    else:
        batched = parse_batched_override(override)
        known = {s.name for s in specs}
        if batched - known:
            raise ValueError(
                f"{source} {BATCHED_INPUTS_KEY}={override!r} names {sorted(batched - known)}, "
                f"which are not inputs (inputs: {sorted(known)})"
            )
        scalars = sorted(s.name for s in specs if s.name in batched and not s.shape)
        if scalars:
            raise ValueError(
                f"{source} {BATCHED_INPUTS_KEY}={override!r}: 0-d inputs {scalars} cannot be batched"
            )
    return tuple(replace(s, batched=s.name in batched) for s in specs)


def validate_inputs(
    signature: Signature, inputs: Mapping[str, np.ndarray], *, max_batch: int | None = None
) -> int:
    """Check names, dtypes, ranks, fixed dimensions and a common batch size of the batched inputs.

    Args:
        signature: the model's signature.
        inputs: the request, by input name.
        max_batch: refuse batches larger than this (None: no limit).

    Returns:
        The batch size (first dimension) shared by the batched inputs; 1 when no input is batched.

    Raises:
        InvalidInputError: any mismatch; the message names the expected signature.
    """
    expected = set(signature.input_names())
    if set(inputs) != expected:
        _fail(signature, f"inputs {sorted(inputs)} given, expected {sorted(expected)}")
    batch: int | None = None
    disagree = False
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
        if spec.is_batched and array.ndim:
            size = int(array.shape[0])
            disagree |= batch is not None and size != batch
            batch = size if batch is None else batch
    if disagree:
        batches: dict[int, list[str]] = {}
        for spec in signature.inputs:
            if spec.is_batched:
                batches.setdefault(int(inputs[spec.name].shape[0]), []).append(spec.name)
        said = ", ".join(f"{names} have {size}" for size, names in sorted(batches.items()))
        _fail(signature, f"batched inputs disagree on the batch size: {said}")
    if batch is None:
        batch = 1
    else:
        for name, axis, symbol in signature.batch_axis_checks:
            got = inputs[name].shape[axis]
            if got != batch:
                _fail(
                    signature,
                    f"input {name!r} has {got} at axis {axis}, the batch axis ({symbol!r}): "
                    f"the batched inputs have {batch}",
                )
    if batch < 1:
        _fail(signature, "batch size must be at least 1")
    if max_batch is not None and batch > max_batch:
        _fail(signature, f"batch size {batch} exceeds the limit of {max_batch}")
    return batch


def _fail(signature: Signature, problem: str) -> None:
    raise InvalidInputError(f"{problem}; expected signature {signature.describe()}")
