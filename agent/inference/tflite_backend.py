"""LiteRT adapter for `InferenceRuntime` (the only module importing ai_edge_litert / tflite_runtime).

Owns: interpreter creation (`ai_edge_litert` with its default XNNPACK delegate, `tflite_runtime` as a
fallback), the Edge TPU delegate (`libedgetpu`), presenting quantized int8/uint8 I/O as float32
(quantize in, dequantize out, with the tensor's scale and zero point), and running static-batch
models (batch 1, as litert-torch exports them) once per sample so callers can still send batches.
Also owns the profile's LiteRT custom-op libraries (each loaded with RTLD_GLOBAL, then its registerer
symbols passed to `InterpreterWithCustomOps`; a missing library or symbol is a
`BackendUnavailableError` naming it) and which inputs are batched (the file's
``edgeloop.batched_inputs`` metadata, else batch-1 emulation when every input has a first axis of 1).
A TFLite interpreter is not thread-safe: calls are serialized with a lock.
Does not choose between TPU and CPU artifacts (that is `registry`).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BackendCrashedError, BackendUnavailableError, ModelLoadError
from agent.inference.signature import BATCHED_INPUTS_KEY, Signature, TensorSpec, declare_batched
from agent.inference.tflite_meta import read_metadata
from agent.profile import LiteRTCustomOps

logger = logging.getLogger(__name__)

EDGETPU_LIBRARY = "libedgetpu.so.1"


def _import_interpreter_module() -> tuple[Any, str]:
    try:
        from ai_edge_litert import interpreter

        return interpreter, "litert"
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as legacy

        return legacy, "tflite_runtime"
    except ImportError as err:
        raise BackendUnavailableError(
            "no TFLite interpreter installed: pip install ai-edge-litert (or tflite-runtime)"
        ) from err


@dataclass(frozen=True)
class _Tensor:
    index: int
    spec: TensorSpec
    raw_dtype: np.dtype[Any]
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.scale != 0.0 and self.raw_dtype.kind in "iu"


class TfliteRuntime:
    """A LiteRT interpreter behind the `InferenceRuntime` port."""

    def __init__(
        self,
        artifact: Path,
        *,
        threads: int = 1,
        edgetpu: bool = False,
        custom_ops: Sequence[LiteRTCustomOps] = (),
    ) -> None:
        """Create and allocate the interpreter.

        Raises:
            BackendUnavailableError: no interpreter package, `edgetpu` and libedgetpu does not load, or a
                custom-op library (or one of its registerer symbols) is missing.
            ModelLoadError: the file is missing, corrupt or not loadable (e.g. an op no library
                registers), or its ``edgeloop.batched_inputs`` metadata names unknown or 0-d inputs.
        """
        module, flavour = _import_interpreter_module()
        delegates = [_load_edgetpu(module)] if edgetpu else None
        registerers = _load_custom_ops(custom_ops)
        kwargs: dict[str, Any] = {"model_path": str(artifact), "num_threads": max(1, threads)}
        kwargs["experimental_delegates"] = delegates
        try:
            if registerers:
                self._interp = module.InterpreterWithCustomOps(custom_op_registerers=registerers, **kwargs)
            else:
                self._interp = module.Interpreter(**kwargs)
            self._interp.allocate_tensors()
        except Exception as err:  # the interpreter raises ValueError/RuntimeError for bad files
            hint = _custom_op_hint(str(err), custom_ops)
            raise ModelLoadError(f"{flavour} cannot load {artifact}: {err}{hint}") from err
        self._lock = threading.Lock()
        self._inputs = [_tensor(d) for d in self._interp.get_input_details()]
        self._outputs = [_tensor(d) for d in self._interp.get_output_details()]
        self._static_batch = bool(self._inputs) and all(t.spec.shape[:1] == (1,) for t in self._inputs)
        self._backend = f"{flavour}[{'edgetpu' if edgetpu else 'xnnpack'}]"
        override = read_metadata(artifact).get(BATCHED_INPUTS_KEY)
        inputs = tuple(_app_spec(t, self._static_batch) for t in self._inputs)
        try:
            inputs = declare_batched(
                inputs,
                override=override.decode("utf-8", errors="replace") if override is not None else None,
                source=f"{artifact.name} metadata",
            )
        except ValueError as err:
            raise ModelLoadError(str(err)) from err
        if self._static_batch and not all(s.is_batched for s in inputs):
            self._static_batch = False  # the metadata says some input is not batched: no emulation
            inputs = tuple(
                _app_spec(t, False, batched=s.is_batched) for t, s in zip(self._inputs, inputs, strict=True)
            )
        self._signature = Signature(
            inputs=inputs, outputs=tuple(_app_spec(t, self._static_batch) for t in self._outputs)
        )

    @property
    def backend(self) -> str:
        return self._backend

    @property
    def signature(self) -> Signature:
        return self._signature

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if not self._static_batch:
                return self._invoke(inputs)
            batch = len(next(iter(inputs.values())))
            parts = [self._invoke({k: v[i : i + 1] for k, v in inputs.items()}) for i in range(batch)]
            return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        except Exception as err:
            raise BackendCrashedError(f"{self._backend} failed during run: {err}") from err

    def _invoke(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            for t in self._inputs:
                self._interp.set_tensor(t.index, _to_raw(t, inputs[t.spec.name]))
            self._interp.invoke()
            return {t.spec.name: _from_raw(t, self._interp.get_tensor(t.index)) for t in self._outputs}

    def close(self) -> None:
        self._interp = None


def _load_edgetpu(module: Any) -> Any:
    try:
        return module.load_delegate(EDGETPU_LIBRARY)
    except (ValueError, OSError, RuntimeError) as err:
        raise BackendUnavailableError(
            f"the profile asks for the Edge TPU delegate but {EDGETPU_LIBRARY} does not load ({err}); "
            "install libedgetpu from Coral's package repository or use the profile's CPU fallback artifact"
        ) from err


def _load_custom_ops(custom_ops: Sequence[LiteRTCustomOps]) -> list[str]:
    """Load each library into the global symbol space; return the registerer names to pass on.

    Raises:
        BackendUnavailableError: a library is missing or does not load, or lacks a registerer.
    """
    names: list[str] = []
    for entry in custom_ops:
        if not Path(entry.library).is_file():
            raise BackendUnavailableError(
                f"custom-op library {entry.library} declared by the device profile "
                "(runtime.custom_ops.litert) does not exist on this device"
            )
        try:
            library = ctypes.CDLL(entry.library, mode=ctypes.RTLD_GLOBAL)
        except OSError as err:
            raise BackendUnavailableError(f"custom-op library {entry.library} does not load: {err}") from err
        for name in entry.registerers:
            if not hasattr(library, name):
                raise BackendUnavailableError(
                    f"custom-op library {entry.library} exports no registerer {name!r} "
                    f"(expected a C symbol `void {name}(tflite::MutableOpResolver*)`)"
                )
            names.append(name)
        logger.info("loaded custom-op library library=%s registerers=%s", entry.library, entry.registerers)
    return names


def _custom_op_hint(message: str, custom_ops: Sequence[LiteRTCustomOps]) -> str:
    if "custom op" not in message.lower():
        return ""
    if not custom_ops:
        return (
            "; the model uses a custom op: declare the library that implements it in the device profile "
            "([runtime.custom_ops] litert = [{ library = ..., registerers = [...] }])"
        )
    return f"; the profile's custom-op libraries ({[e.library for e in custom_ops]}) do not register it"


def _tensor(detail: Mapping[str, Any]) -> _Tensor:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    raw = np.dtype(detail["dtype"])
    spec = TensorSpec(name=str(detail["name"]), dtype=raw.name, shape=tuple(int(d) for d in detail["shape"]))
    return _Tensor(
        index=int(detail["index"]), spec=spec, raw_dtype=raw, scale=float(scale), zero_point=int(zero_point)
    )


def _app_spec(t: _Tensor, static_batch: bool, *, batched: bool | None = None) -> TensorSpec:
    shape = (None, *t.spec.shape[1:]) if static_batch else t.spec.shape
    dtype = "float32" if t.quantized else t.spec.dtype
    return TensorSpec(name=t.spec.name, dtype=dtype, shape=shape, batched=batched)


def _to_raw(t: _Tensor, array: np.ndarray) -> np.ndarray:
    if not t.quantized:
        return array
    info = np.iinfo(t.raw_dtype)
    q = np.round(array / t.scale) + t.zero_point
    return np.clip(q, info.min, info.max).astype(t.raw_dtype)


def _from_raw(t: _Tensor, array: np.ndarray) -> np.ndarray:
    if not t.quantized:
        return np.array(array, copy=True)
    return ((array.astype(np.float32) - t.zero_point) * t.scale).astype(np.float32)
