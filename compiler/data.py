"""Calibration and evaluation data: `.npz` files (or folders of them) turned into named input arrays.

Owns the on-disk data convention and its digests for lineage. An `.npz` holds one array per model
input, named after the input (`x` is accepted for single-input models), plus optional integer labels
under `y` (or `labels`). A folder is read as every `*.npz` in it, concatenated in name order. Does not
know about models beyond matching input names and shapes (`check_against`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compiler.errors import InputError

LABEL_KEYS = ("y", "labels")


@dataclass(frozen=True)
class Dataset:
    """Named input arrays (first axis = samples), optional labels, and a content digest."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None
    digest: str
    source: str

    def __len__(self) -> int:
        return int(next(iter(self.inputs.values())).shape[0])

    def head(self, n: int) -> Dataset:
        """The first `n` samples (same digest prefix rule: a new digest over the slice)."""
        inputs = {k: v[:n] for k, v in self.inputs.items()}
        labels = None if self.labels is None else self.labels[:n]
        return Dataset(inputs, labels, _digest(inputs, labels), f"{self.source}[:{n}]")

    def batch(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {k: v[start:stop] for k, v in self.inputs.items()}


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
    arrays = {k: np.concatenate([p[k] for p in parts]) for k in sorted(keys)}
    label_key = next((k for k in LABEL_KEYS if k in arrays), None)
    labels = arrays.pop(label_key).astype(np.int64) if label_key else None
    if not arrays:
        raise InputError(f"{path}: no input arrays (only labels)")
    counts = {len(v) for v in arrays.values()} | ({len(labels)} if labels is not None else set())
    if len(counts) != 1:
        raise InputError(f"{path}: arrays have different sample counts {sorted(counts)}")
    return Dataset(arrays, labels, _digest(arrays, labels), str(path))


def from_arrays(inputs: dict[str, np.ndarray], labels: np.ndarray | None = None) -> Dataset:
    """Build a Dataset in memory (tests, benches, the Python API)."""
    return Dataset(dict(inputs), labels, _digest(inputs, labels), "<memory>")


def check_against(data: Dataset, specs: dict[str, tuple[tuple[int | str, ...], str]], what: str) -> Dataset:
    """Match data arrays to model inputs by name and shape, and cast to the model's dtypes.

    `specs` maps input name to (shape with symbolic dims as str, numpy dtype name). A single array
    named `x` is renamed to the model's only input.

    Raises:
        InputError: a missing input, or a shape that does not fit (the message shows both).
    """
    inputs = dict(data.inputs)
    if len(specs) == 1 and len(inputs) == 1 and next(iter(specs)) not in inputs:
        inputs = {next(iter(specs)): next(iter(inputs.values()))}
    out: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in specs.items():
        if name not in inputs:
            raise InputError(f"{what} data has no array for model input {name!r} (has {sorted(inputs)})")
        arr = inputs[name]
        fixed = [(i, d) for i, d in enumerate(shape) if isinstance(d, int) and i > 0]
        if arr.ndim != len(shape) or any(arr.shape[i] != d for i, d in fixed):
            raise InputError(
                f"{what} data {name!r} has shape {tuple(arr.shape)}, model expects "
                f"{tuple(shape)} (first axis = samples)"
            )
        out[name] = arr.astype(dtype, copy=False)
    return Dataset(out, data.labels, data.digest, data.source)


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


def _digest(inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for k in sorted(inputs):
        arr = np.ascontiguousarray(inputs[k])
        h.update(f"{k}|{arr.dtype}|{arr.shape}".encode())
        h.update(arr.tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()
