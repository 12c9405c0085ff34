"""The server's own labelled data for a federated model: the port the robust defences read.

Owns `RootSet` (features x, labels y of a model's server-held set) and the `RootData` port that
resolves one for a registry model name at the start of a run; `StaticRootData` is the in-memory
adapter (tests, the accuracy harness, a fleet whose root set is given by configuration). The
registry-backed adapter (`RegistryRootData`, built in `wiring.py`) reads the model's evaluation
blob. It does not train or score anything: `defences.head` does, on what this returns.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fleet_server.errors import FleetError, InvalidRequestError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RootSet:
    """A small clean labelled set held by the server (FLTrust's root data, Cao et al. NDSS 2021)."""

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        """Raises: InvalidRequestError when x is not 2-D, y not 1-D integer labels of the same length."""
        x, y = np.asarray(self.x), np.asarray(self.y)
        if x.ndim != 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
            raise InvalidRequestError(f"root set needs x (n, d) and y (n,), got {x.shape} and {y.shape}")
        if not np.issubdtype(y.dtype, np.integer) or int(y.min()) < 0:
            raise InvalidRequestError("root set labels must be non-negative integers")
        object.__setattr__(self, "x", x.astype(np.float64))
        object.__setattr__(self, "y", y.astype(np.int64))


class RootData(Protocol):
    def for_model(self, model: str) -> RootSet | None:
        """The model's server-held labelled set, or None when it has none."""
        ...


class StaticRootData:
    """One root set for every model (or none)."""

    def __init__(self, root: RootSet | None) -> None:
        self.root = root

    def for_model(self, model: str) -> RootSet | None:
        return self.root


class RegistryRootData:
    """The evaluation set (`eval` blob, an .npz with x and y) of the model's newest registry version.

    `datasets(model)` returns that version's `datasets` dict (None for an unknown model) and
    `blob(sha256)` its bytes (the OTA store, hash-checked). Inputs are flattened to one row per
    sample; a set that does not load, or whose features do not fit the run's head, gives no root
    set (the defences that need one are skipped and the run says so in its round metrics).
    """

    def __init__(
        self, datasets: Callable[[str], dict[str, Any] | None], blob: Callable[[str], bytes]
    ) -> None:
        self._datasets, self._blob = datasets, blob

    def for_model(self, model: str) -> RootSet | None:
        if not model:
            return None
        found = self._datasets(model)
        sha = str((found or {}).get("eval_sha256") or "")
        if not sha:
            return None
        try:
            with np.load(io.BytesIO(self._blob(sha)), allow_pickle=False) as data:
                x, y = np.asarray(data["x"]), np.asarray(data["y"])
            return RootSet(x.reshape(len(x), -1), y.astype(np.int64))
        except (FleetError, OSError, KeyError, ValueError) as err:
            logger.warning("no root set for model %s: %s", model, err)
            return None
