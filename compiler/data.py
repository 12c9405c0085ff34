"""Calibration and evaluation data: `.npz` files (or folders of them) turned into named input arrays.

Owns the on-disk data convention and its digests for lineage. An `.npz` holds one array per model
input, named after the input (`x` is accepted for single-input models), plus optional integer labels
under `y` (or `labels`). A folder is read as every `*.npz` in it, concatenated in name order.

Every array has a leading samples axis, except 0-d arrays, which are constants given to every call
(a sample rate). Models with non-batched inputs (a recurrent state whose first axis is not the batch,
a 0-d scalar; see `agent.inference.signature`) are fed one call per sample: a batched input gives
that call a batch of 1, a non-batched input its value for that sample (its array has one more axis
than the model input: ``state`` of shape ``(N, 2, 1, 128)`` for a model input ``[2, 1, 128]``) or
the 0-d constant. `check_against` decides this from the model's inputs; `batch`/`calls` then yield
complete feeds. Does not know about models beyond matching input names and shapes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from compiler.errors import InputError

LABEL_KEYS = ("y", "labels")


@dataclass(frozen=True)
class Dataset:
    """Named input arrays (first axis = samples), optional labels, and a content digest.

    `constants` are 0-d arrays given whole to every call; `per_call` names inputs of `inputs` that
    the model does not batch (each call takes one sample's value, without the samples axis). A
    dataset with per-call inputs is `stateful`: it is fed one sample per call.
    """

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    digest: str
    source: str
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    per_call: frozenset[str] = frozenset()

    def __len__(self) -> int:
        first = next(iter(self.inputs.values()), None)
        return int(first.shape[0]) if first is not None else 1

    @property
    def stateful(self) -> bool:
        """True when some input is fed whole per call (the dataset runs one sample per call)."""
        return bool(self.per_call or self.constants)

    def head(self, n: int) -> Dataset:
        """The first `n` samples (same digest prefix rule: a new digest over the slice)."""
        inputs = {k: v[:n] for k, v in self.inputs.items()}
        labels = None if self.labels is None else self.labels[:n]
        digest = _digest(inputs, labels, self.constants)
        return Dataset(inputs, labels, digest, f"{self.source}[:{n}]", dict(self.constants), self.per_call)

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The model feed for samples [start, stop): batched slices, per-call values, constants.

        Raises:
            InputError: more than one sample asked of a dataset with per-call inputs.
        """
        if self.per_call and stop - start > 1:
            raise InputError(
                f"inputs {sorted(self.per_call)} are not batched by the model: feed one sample per call "
                f"(asked for {stop - start})"
            )
        feed = {k: (v[start] if k in self.per_call else v[start:stop]) for k, v in self.inputs.items()}
        return {**feed, **self.constants}

    def calls(self, batch_size: int = 1) -> Iterator[dict[str, np.ndarray]]:
        """Complete model feeds covering every sample (one sample per call when `stateful`)."""
        step = 1 if self.per_call else max(1, batch_size)
        for start in range(0, len(self), step):
            yield self.batch(start, min(start + step, len(self)))


def load_dataset(path: Path) -> Dataset:
    """Load an `.npz` file or a folder of `.npz` files.

    Raises:
        InputError: missing/unreadable file, no input arrays, or inconsistent sample counts.
    """
    files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
    if not files or not files[0].is_file():
        raise InputError(f"data not found: {path} (expected an .npz file or a folder of them)")
    parts = [_read_npz(f) for f in files]
    keys = set(parts[0])
    if any(set(p) != keys for p in parts):
        raise InputError(f"{path}: the .npz files do not all hold the same arrays")
    constants = _constants(path, parts)
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in sorted(keys - set(constants))}
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = arrays.pop(label_key).astype(np.int64) if label_key else None
    if not arrays and not constants:
        raise InputError(f"{path}: no input arrays (only labels)")
    counts = {len(v) for v in arrays.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) > 1:
        raise InputError(
            f"{path}: arrays have different sample counts {sorted(counts)}; every array but a 0-d "
            "constant needs a leading samples axis (a non-batched input such as a recurrent state "
            "takes one value per sample: shape (samples, *input shape))"
        )
    return Dataset(arrays, labels, _digest(arrays, labels, constants), str(path), constants)


def from_arrays(inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> Dataset:
    """Build a Dataset in memory (tests, benches, the Python API); 0-d arrays become constants."""
    constants = {k: np.asarray(v) for k, v in inputs.items() if np.ndim(v) == 0}
    arrays = {k: v for k, v in inputs.items() if k not in constants}
    return Dataset(arrays, labels, _digest(arrays, labels, constants), "<memory>", constants)


Specs = Mapping[str, tuple[tuple[int | str, ...], str]]


def batched_inputs(specs: Specs) -> set[str]:
    """Model inputs whose first axis is the batch, read from the shapes (the agent's own rule).

    A 0-d input or a fixed first axis is not batched; symbolic first axes are, unless they disagree
    (then the one named like a batch). See `agent.inference.signature.infer_batched`.
    """
    from agent.inference.signature import TensorSpec, infer_batched

    tensors = [
        TensorSpec(n, dtype, tuple(d if isinstance(d, int) else None for d in shape))
        for n, (shape, dtype) in specs.items()
    ]
    first = {
        n: (str(shape[0]) if shape and isinstance(shape[0], str) and shape[0] != "?" else None)
        for n, (shape, _) in specs.items()
    }
    return infer_batched(tensors, first)


def check_against(
    data: Dataset, specs: Specs, what: str, *, batched: set[str] | frozenset[str] | None = None
) -> Dataset:
    """Match data arrays to model inputs by name and shape, and cast to the model's dtypes.

    `specs` maps input name to (shape with symbolic dims as str, numpy dtype name); `batched` names
    the inputs the model batches (default: `batched_inputs(specs)`). A single array named `x` is
    renamed to the model's only input. A non-batched input takes a 0-d constant (0-d inputs) or one
    value per sample (the model's shape with a leading samples axis).

    Raises:
        InputError: a missing input, or a shape that does not fit (the message shows both).
    """
    batched = batched_inputs(specs) if batched is None else set(batched)
    inputs = {**data.inputs, **data.constants}
    if len(specs) == 1 and len(inputs) == 1 and next(iter(specs)) not in inputs:
        inputs = {next(iter(specs)): next(iter(inputs.values()))}
    out: dict[str, np.ndarray] = {}
    constants: dict[str, np.ndarray] = {}
    per_call: set[str] = set()
    for name, (shape, dtype) in specs.items():
        if name not in inputs:
            raise InputError(f"{what} data has no array for model input {name!r} (has {sorted(inputs)})")
        arr = inputs[name]
        fixed_one = bool(shape) and shape[0] == 1 and arr.ndim == len(shape)  # static batch of 1
        if name in batched or fixed_one:
            _check_shape(what, name, arr, shape, lead=0, start=1)
            out[name] = arr.astype(dtype, copy=False)
        elif arr.ndim == 0 and not shape:
            constants[name] = arr.astype(dtype)
        else:
            _check_shape(what, name, arr, shape, lead=1, start=0)
            out[name] = arr.astype(dtype, copy=False)
            per_call.add(name)
    counts = {len(v) for v in out.values()}
    if len(counts) > 1:
        raise InputError(f"{what} data: arrays have different sample counts {sorted(counts)}")
    return Dataset(out, data.labels, data.digest, data.source, constants, frozenset(per_call))


def _check_shape(
    what: str, name: str, arr: np.ndarray, shape: tuple[int | str, ...], *, lead: int, start: int
) -> None:
    """`arr` must have `lead` extra leading axes and match the fixed dims of `shape` from `start`."""
    fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int) and i >= start]
    if arr.ndim == len(shape) + lead and all(arr.shape[i + lead] == d for i, d in fixed):
        return
    if lead:
        expected = (
            f"(samples, {', '.join(str(d) for d in shape)})" if shape else "() (a 0-d constant) or (samples,)"
        )
        raise InputError(
            f"{what} data {name!r} has shape {tuple(arr.shape)}; the model input {tuple(shape)} is not "
            f"batched, so give one value per sample with shape {expected}"
        )
    raise InputError(
        f"{what} data {name!r} has shape {tuple(arr.shape)}, model expects {tuple(shape)} "
        "(first axis = samples)"
    )


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, hex."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read {path} as .npz: {err}") from err


def _constants(path: Path, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """0-d arrays: constants for every call; across files of a folder they must be equal."""
    names = {k for part in parts for k, v in part.items() if v.ndim == 0}
    for name in sorted(names):
        values = [part[name] for part in parts]
        if any(v.ndim != 0 for v in values) or any(not np.array_equal(v, values[0]) for v in values):
            raise InputError(
                f"{path}: {name!r} is a 0-d constant in some files and differs or is not 0-d in others; "
                "give it one value per sample (shape (samples,)) in every file instead"
            )
    return {name: parts[0][name] for name in sorted(names)}


def _digest(
    inputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    constants: Mapping[str, np.ndarray] | None = None,
) -> str:
    h = hashlib.sha256()
    merged = {**inputs, **{f"const:{k}": v for k, v in (constants or {}).items()}}
    for k in sorted(merged):
        arr = np.ascontiguousarray(merged[k])
        h.update(f"{k}|{arr.dtype}|{arr.shape}".encode())
        h.update(arr.tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()
