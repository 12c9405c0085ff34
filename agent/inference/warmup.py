"""Warm-up of a freshly loaded model: one real call that proves it executes before it may serve.

Owns the warm-up sample convention and `warm_up`. A release may ship a warm-up sample (``.npz``, one
array per model input, named after it; like the golden set it travels with the release and is kept
beside the model in its slot as ``warmup.npz``). With a sample the model runs on it; without one
it runs on zeros built from the signature (batched inputs with a batch of 1, every other dynamic
dimension 1). Zeros cannot drive every model (a sample-rate input must hold a supported rate, a
sequence may need a minimum length), so a zeros warm-up that fails says that no sample was shipped
and how to ship one. Does not load models or touch slots.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.errors import InferenceError, InvalidInputError, ModelLoadError
from agent.inference.runtime import InferenceRuntime
from agent.inference.signature import Signature, validate_inputs

WARMUP_FILE = "warmup.npz"
MAX_WARMUP_BYTES = 16 << 20

Sample = dict[str, np.ndarray]


def parse_sample(data: bytes) -> Sample:
    """The arrays of a warm-up ``.npz`` (no pickles).

    Raises:
        InvalidInputError: not an ``.npz`` of plain arrays, or empty.
    """
    if len(data) > MAX_WARMUP_BYTES:
        raise InvalidInputError(f"warm-up sample is {len(data)} bytes, the limit is {MAX_WARMUP_BYTES}")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise InvalidInputError(f"warm-up sample is not a readable .npz of arrays: {err}") from err
    if not arrays:
        raise InvalidInputError("warm-up sample holds no arrays")
    return arrays


def sample_bytes(sample: Mapping[str, np.ndarray]) -> bytes:
    """Serialize a sample as ``.npz`` (what is written beside the model)."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in sample.items()}
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def zeros_for(signature: Signature) -> Sample:
    """Zeros for every input: batch 1 for batched inputs, 1 for every other dynamic dimension."""
    return {
        s.name: np.zeros(tuple(1 if d is None else d for d in s.shape), dtype=s.np_dtype)
        for s in signature.inputs
    }


def warm_up(runtime: InferenceRuntime, sample: Mapping[str, np.ndarray] | None = None) -> None:
    """Run the warm-up sample (or zeros when none is given) and check the outputs are finite.

    Raises:
        ModelLoadError: the sample does not fit the signature, the runtime failed, or an output is
            not finite; the message says whether the release's sample or zeros were used.
    """
    signature = runtime.signature
    if sample is None:
        inputs, what = zeros_for(signature), "zeros (the release ships no warm-up sample)"
    else:
        inputs, what = _fit(signature, sample), "the release's warm-up sample"
    try:
        outputs = runtime.run(inputs)
    except InferenceError as err:
        raise ModelLoadError(f"warm-up with {what} failed: {err}{_hint(sample)}") from err
    for name, array in outputs.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ModelLoadError(f"warm-up with {what}: output {name!r} is not finite{_hint(sample)}")


def _fit(signature: Signature, sample: Mapping[str, np.ndarray]) -> Sample:
    arrays = dict(sample)
    names = signature.input_names()
    if len(names) == 1 and set(arrays) == {"x"} and names[0] != "x":
        arrays = {names[0]: arrays["x"]}
    try:
        cast = {
            s.name: np.asarray(arrays[s.name]).astype(s.np_dtype, copy=False)
            for s in signature.inputs
            if s.name in arrays
        }
        validate_inputs(signature, {**arrays, **cast})
    except InvalidInputError as err:
        raise ModelLoadError(f"the release's warm-up sample does not fit the model: {err}") from err
    return {**arrays, **cast}


def _hint(sample: Mapping[str, np.ndarray] | None) -> str:
    if sample is not None:
        return ""
    return (
        "; zeros cannot drive every model: ship a warm-up sample with the release "
        "(`edgeloop models register ... --warmup FILE.npz`, one array per input named after it; "
        "locally: `edgeloop-agent install MODEL --warmup FILE.npz`)"
    )
