"""Agent inference runtime: backends behind one port, request path, hot-swappable model handles.

Backends (`onnx_backend`, `tflite_backend`) import their runtime lazily, so importing this package
never pulls onnxruntime or LiteRT. The gRPC API lives in `agent.serving`.
"""

from agent.inference.engine import InferenceEngine, Prediction, ServingOptions
from agent.inference.handle import ModelHandle, ModelHolder, ModelMeta
from agent.inference.registry import ProfileLoader, load_runtime
from agent.inference.runtime import InferenceRuntime, RuntimeLoader
from agent.inference.signature import (
    BATCHED_INPUTS_KEY,
    Signature,
    TensorSpec,
    declare_batched,
    infer_batched,
    validate_inputs,
)
from agent.inference.warmup import WARMUP_FILE, warm_up

__all__ = [
    "BATCHED_INPUTS_KEY",
    "WARMUP_FILE",
    "InferenceEngine",
    "InferenceRuntime",
    "ModelHandle",
    "ModelHolder",
    "ModelMeta",
    "Prediction",
    "ProfileLoader",
    "RuntimeLoader",
    "ServingOptions",
    "declare_batched",
    "infer_batched",
    "Signature",
    "TensorSpec",
    "load_runtime",
    "validate_inputs",
    "warm_up",
]
