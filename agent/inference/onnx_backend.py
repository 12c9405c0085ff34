"""onnxruntime adapter for `InferenceRuntime` (the only module that imports onnxruntime).

Owns session creation with the profile's execution providers (absent providers are skipped with a
warning; CPU is always last), the profile's custom-op libraries (`register_custom_ops_library`; a
missing file or a library onnxruntime refuses is a `BackendUnavailableError` naming it), thread
settings, the signature read from the session (which inputs are batched: the model's
``edgeloop.batched_inputs`` metadata, else the symbolic first dimensions), and translation of
onnxruntime exceptions into `ModelLoadError` / `BackendCrashedError`. Does not validate requests.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BackendCrashedError, BackendUnavailableError, ModelLoadError
from agent.inference.signature import BATCHED_INPUTS_KEY, Shape, Signature, TensorSpec, declare_batched

logger = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError("onnxruntime is not installed (pip install onnxruntime)") from err
    return onnxruntime


def choose_providers(wanted: Sequence[str], available: Sequence[str]) -> list[str]:
    """Keep the wanted providers that are available, in order, always ending with the CPU EP."""
    chosen = []
    for provider in wanted:
        if provider in available:
            chosen.append(provider)
        else:
            logger.warning(
                "execution provider %s is not available here, skipping (have %s)", provider, available
            )
    if CPU_EP not in chosen:
        chosen.append(CPU_EP)
    return chosen


class OnnxRuntime:
    """An onnxruntime `InferenceSession` behind the `InferenceRuntime` port."""

    def __init__(
        self,
        artifact: Path,
        *,
        providers: Sequence[str] = (CPU_EP,),
        threads: int = 1,
        custom_op_libraries: Sequence[str] = (),
    ) -> None:
        """Create the session.

        Raises:
            BackendUnavailableError: onnxruntime is not installed, or a custom-op library is missing
                or refused by onnxruntime.
            ModelLoadError: the file is missing, corrupt or not loadable, or its
                ``edgeloop.batched_inputs`` metadata names unknown or 0-d inputs.
        """
        ort = _import_ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No spin-waiting between calls: the agent shares a small CPU with the applications it serves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for library in custom_op_libraries:
            _register_library(options, library)
        chosen = choose_providers(providers, ort.get_available_providers())
        try:
            self._session = ort.InferenceSession(str(artifact), sess_options=options, providers=chosen)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            raise ModelLoadError(f"onnxruntime cannot load {artifact}: {err}") from err
        self._backend = f"onnxruntime[{','.join(self._session.get_providers())}]"
        nodes = self._session.get_inputs()
        override = self._session.get_modelmeta().custom_metadata_map.get(BATCHED_INPUTS_KEY)
        try:
            inputs = declare_batched(
                [_spec(i) for i in nodes],
                first_dims={i.name: _symbol(i.shape) for i in nodes},
                override=override,
                source=f"{artifact.name} metadata",
            )
        except ValueError as err:
            raise ModelLoadError(str(err)) from err
        self._signature = Signature(
            inputs=inputs, outputs=tuple(_spec(o) for o in self._session.get_outputs())
        )
        self._output_names = [o.name for o in self._signature.outputs]

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            results = self._session.run(self._output_names, dict(inputs))
        except Exception as err:
            raise BackendCrashedError(f"onnxruntime failed during run: {err}") from err
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._session = None


def _register_library(options: Any, library: str) -> None:
    if not Path(library).is_file():
        raise BackendUnavailableError(
            f"custom-op library {library} declared by the device profile (runtime.custom_ops.onnxruntime) "
            "does not exist on this device"
        )
    try:
        options.register_custom_ops_library(library)
    except Exception as err:  # onnxruntime raises its own pybind exception types
        raise BackendUnavailableError(f"onnxruntime refused custom-op library {library}: {err}") from err
    logger.info("registered custom-op library library=%s", library)


def _symbol(shape: Sequence[Any]) -> str | None:
    """The symbolic name of the first dimension ("batch", "N"), None when fixed, unnamed or 0-d."""
    first = shape[0] if len(shape) else None
    return first if isinstance(first, str) and first else None


def _spec(node: Any) -> TensorSpec:
    dtype = _ORT_TYPES.get(node.type)
    if dtype is None:
        raise ModelLoadError(f"tensor {node.name!r} has unsupported type {node.type}")
    shape: Shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in node.shape)
    names = tuple(d if isinstance(d, str) and d else None for d in node.shape)
    return TensorSpec(name=node.name, dtype=dtype, shape=shape, dim_names=names if any(names) else ())
