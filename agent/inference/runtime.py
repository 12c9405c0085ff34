"""The `InferenceRuntime` port: one loaded model that turns named numpy inputs into named outputs.

Owns the protocol every backend adapter implements (`onnx_backend`, `tflite_backend`) and the
`RuntimeLoader` port the serving layer uses to (re)load artifacts. Does not choose a backend (that is
`registry`), validate requests (`signature`) or do any scheduling, batching or telemetry.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from agent.inference.signature import Signature


@runtime_checkable
class InferenceRuntime(Protocol):
    """A loaded model. Implementations are thread-safe for concurrent `run` calls."""

    @property
    def backend(self) -> str:
        """Short backend name for logs and ModelInfo, e.g. ``"onnxruntime[CPUExecutionProvider]"``."""
        ...

    @property
    def signature(self) -> Signature:
        """The app-facing signature (quantized I/O is presented as float32)."""
        ...

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one (possibly batched) inference on already validated inputs.

        Args:
            inputs: one array per input name, matching `signature`.

        Returns:
            One array per output name, batch first.

        Raises:
            BackendCrashedError: the runtime failed during the call; the caller should reload.
        """
        ...

    def close(self) -> None:
        """Release the runtime's resources; `run` must not be called afterwards."""
        ...


class RuntimeLoader(Protocol):
    """Port: load an artifact into a runtime (the registry in production, fakes in tests)."""

    def __call__(self, artifact: Path) -> InferenceRuntime:
        """Load and return a ready runtime.

        Raises:
            ModelLoadError: the file is missing, corrupt or unsupported.
            BackendUnavailableError: the runtime, provider or delegate the profile needs is absent.
        """
        ...
