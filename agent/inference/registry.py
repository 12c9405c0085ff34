"""Choose and build the backend for an artifact on this device (the composition of profile + file).

Owns the suffix -> factory table (`.onnx` -> onnxruntime with the profile's execution providers and
threads, one thread for cheap models unless ``runtime.threads_auto = false``,
`.tflite` -> LiteRT with XNNPACK, `*_edgetpu.tflite` -> the Edge TPU delegate when the profile says
Coral; each with the profile's custom-op libraries) and the Edge TPU -> CPU artifact fallback.
Backend modules are imported lazily here, so a device without LiteRT still serves ONNX models.
Does not validate requests or keep models alive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import BackendUnavailableError, ModelLoadError
from agent.inference.runtime import InferenceRuntime
from agent.profile import DeviceProfile

logger = logging.getLogger(__name__)

EDGETPU_SUFFIX = "_edgetpu.tflite"
SUPPORTED_SUFFIXES = (".onnx", ".tflite")


def _load_onnx(artifact: Path, profile: DeviceProfile) -> InferenceRuntime:
    from agent.inference.onnx_backend import CPU_EP, OnnxRuntime

    providers = profile.runtime.execution_providers or (CPU_EP,)
    return OnnxRuntime(
        artifact,
        providers=providers,
        threads=profile.runtime.threads,
        custom_op_libraries=profile.runtime.onnx_custom_op_libraries,
        auto_threads=profile.runtime.threads_auto,
    )


def _load_tflite(artifact: Path, profile: DeviceProfile) -> InferenceRuntime:
    from agent.inference.tflite_backend import TfliteRuntime

    wants_tpu = profile.runtime.delegate == "edgetpu" and artifact.name.endswith(EDGETPU_SUFFIX)
    custom = profile.runtime.litert_custom_ops
    if not wants_tpu:
        return TfliteRuntime(artifact, threads=profile.runtime.threads, custom_ops=custom)
    try:
        return TfliteRuntime(artifact, threads=profile.runtime.threads, edgetpu=True, custom_ops=custom)
    except BackendUnavailableError:
        cpu_artifact = cpu_fallback_for(artifact)
        if not cpu_artifact.is_file():
            raise
        logger.warning("Edge TPU unavailable, serving the CPU fallback artifact %s", cpu_artifact.name)
        return TfliteRuntime(cpu_artifact, threads=profile.runtime.threads, custom_ops=custom)


_FACTORIES: dict[str, Callable[[Path, DeviceProfile], InferenceRuntime]] = {
    ".onnx": _load_onnx,
    ".tflite": _load_tflite,
}


def cpu_fallback_for(artifact: Path) -> Path:
    """`model_edgetpu.tflite` -> `model.tflite` beside it (the compiler ships both for Coral)."""
    return artifact.with_name(artifact.name[: -len(EDGETPU_SUFFIX)] + ".tflite")


def load_runtime(artifact: Path, profile: DeviceProfile) -> InferenceRuntime:
    """Load `artifact` with the backend its suffix and the device profile call for.

    Raises:
        ModelLoadError: missing file, unsupported suffix or a file the runtime rejects.
        BackendUnavailableError: the runtime or delegate needed is not installed on this device.
    """
    if not artifact.is_file():
        raise ModelLoadError(f"model artifact {artifact} does not exist")
    factory = _FACTORIES.get(artifact.suffix)
    if factory is None:
        raise ModelLoadError(f"unsupported model format {artifact.suffix!r}; supported: {SUPPORTED_SUFFIXES}")
    runtime = factory(artifact, profile)
    logger.info("loaded model artifact=%s backend=%s", artifact.name, runtime.backend)
    return runtime


@dataclass(frozen=True)
class ProfileLoader:
    """`RuntimeLoader` bound to a device profile (what the serving layer is given)."""

    profile: DeviceProfile

    def __call__(self, artifact: Path) -> InferenceRuntime:
        return load_runtime(artifact, self.profile)
