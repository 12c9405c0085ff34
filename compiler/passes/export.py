"""Export pass: a PyTorch model (or an ONNX file) into one self-contained ONNX file.

Owns loading model sources (`module:factory` + state dict, TorchScript `.pt`, exported program
`.pt2`, or `.onnx`), the torch -> ONNX export with a pinned opset and a dynamic batch axis, and the
"can this runtime load it" check that lists unsupported ops. Does not quantize or measure.

Measured constraints (torch 2.13): the dynamo exporter needs `onnxscript`, a sample batch of at least
2 for a dynamic batch axis, and `external_data=False` for a single file.
"""

from __future__ import annotations

import gc
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler._util import stdout_to_stderr
from compiler.data import file_digest
from compiler.errors import InputError, UnsupportedError

if TYPE_CHECKING:
    import torch

OPSET = 18
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit")


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: kind is factory | torchscript | exported | onnx."""

    kind: str
    location: str
    weights: Path | None = None

    @property
    def is_torch(self) -> bool:
        return self.kind != "onnx"


def resolve_source(model: str, weights: Path | None = None) -> ModelSource:
    """Classify `--model`: a file path (.onnx/.pt/.pt2) or an importable `module:factory`.

    Raises:
        InputError: neither an existing file nor a `module:factory` spec.
    """
    path = Path(model)
    if path.suffix == ".onnx":
        kind = "onnx"
    elif path.suffix == ".pt2":
        kind = "exported"
    elif path.suffix in TORCHSCRIPT_SUFFIXES:
        kind = "torchscript"
    elif re.fullmatch(r"[\w.]+:\w+", model):
        return ModelSource("factory", model, weights)
    else:
        raise InputError(f"--model {model!r}: expected .onnx, .pt/.pth (TorchScript), .pt2 or module:factory")
    if not path.is_file():
        raise InputError(f"model file not found: {path}")
    return ModelSource(kind, str(path), weights)


def source_digest(source: ModelSource) -> str:
    """sha256 identifying the input model: the file, or the state dict of a factory model."""
    if source.kind != "factory":
        return file_digest(Path(source.location))
    return file_digest(source.weights) if source.weights else f"factory:{source.location}"


def load_torch_model(source: ModelSource) -> torch.nn.Module:
    """Instantiate a torch model in eval mode.

    Raises:
        InputError: import failure, unreadable/corrupt file, or a state dict that does not fit.
    """
    import torch

    try:
        if source.kind == "factory":
            module_name, factory = source.location.split(":")
            model = getattr(importlib.import_module(module_name), factory)()
            if source.weights is not None:
                state = torch.load(source.weights, map_location="cpu", weights_only=True)
                model.load_state_dict(state)
        elif source.kind == "torchscript":
            model = torch.jit.load(source.location, map_location="cpu")  # type: ignore[no-untyped-call]
        elif source.kind == "exported":
            return torch.export.load(source.location).module()  # frozen: refuses .eval(), already eval
        else:
            raise InputError(f"{source.location} is ONNX, not a torch model")
    except InputError:
        raise
    except Exception as err:  # any import/unpickle/shape failure means the input is unusable
        raise InputError(f"cannot load model {source.location}: {type(err).__name__}: {err}") from err
    return model.eval()  # type: ignore[no-any-return]


def export_onnx(
    model: torch.nn.Module,
    sample: dict[str, np.ndarray],
    out: Path,
    *,
    opset: int = OPSET,
    dynamic_dims: dict[str, dict[int, str]] | None = None,
) -> Path:
    """Export to a single ONNX file with a dynamic batch axis, then check and shape-infer it.

    `sample` maps input names (forward() parameter names for multi-input models) to arrays with a
    batch of at least 2. A single input is exported as `input`; the output is named `output`.

    Raises:
        UnsupportedError: the exporter cannot lower the model (the message carries its reason).
    """
    import onnx
    import torch

    names = ordered_names(model, sample)
    tensors = tuple(torch.from_numpy(np.ascontiguousarray(sample[n][:2])) for n in names)
    if any(t.shape[0] < 2 for t in tensors):
        raise InputError("export needs at least 2 samples (a batch of 1 cannot carry a dynamic axis)")
    dims = dynamic_dims or {n: {0: "batch"} for n in names}
    torch_dims = {n: {ax: torch.export.Dim(label) for ax, label in d.items()} for n, d in dims.items()}
    dynamic_shapes = tuple(torch_dims.get(n, {}) for n in names)  # positional, like `tensors`
    input_names = ["input"] if len(names) == 1 else names
    try:
        # The exporter parses Python source with `ast`. On CPython 3.11 a finalizer that raises
        # while an AST is being built (LiteRT's Delegate.__del__ does) trips "AST constructor
        # recursion depth mismatch" (CPython gh-106905). Collect first and keep the GC paused.
        gc.collect()
        gc.disable()
        with stdout_to_stderr(), torch.no_grad():
            torch.onnx.export(
                model,
                tensors,
                str(out),
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=input_names,
                output_names=["output"],
                dynamic_shapes=dynamic_shapes,
            )
    except Exception as err:
        raise UnsupportedError(f"torch -> ONNX export failed: {type(err).__name__}: {err}") from err
    finally:
        gc.enable()
    onnx.save(onnx.shape_inference.infer_shapes(onnx.load(str(out))), str(out))
    return out


def check_onnx(path: Path) -> None:
    """Check that an ONNX file is well formed and that onnxruntime (CPU) can run every op.

    Raises:
        InputError: the file is not a valid ONNX model (corrupt, truncated, not ONNX).
        UnsupportedError: ops unknown to ONNX / onnxruntime; the message lists them.
    """
    import onnx
    import onnxruntime as ort

    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as err:
        raise InputError(f"{path} is not a valid ONNX model: {type(err).__name__}: {err}") from err
    unknown = sorted(
        {
            f"{n.domain or 'ai.onnx'}::{n.op_type}"
            for n in proto.graph.node
            if not _known_op(n.op_type, n.domain)
        }
    )
    if unknown:
        raise UnsupportedError(f"{path}: unsupported ops for onnxruntime CPU: {', '.join(unknown)}")
    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        ops = sorted(set(re.findall(r"implementation for (\w+)", str(err)))) or ["(see message)"]
        raise UnsupportedError(f"{path}: onnxruntime cannot run ops {', '.join(ops)}: {err}") from err


def onnx_input_specs(path: Path) -> dict[str, tuple[tuple[int | str, ...], str]]:
    """Input name -> (shape with symbolic dims as str, numpy dtype name), from the ONNX graph."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in proto.graph.initializer}
    specs: dict[str, tuple[tuple[int | str, ...], str]] = {}
    for inp in proto.graph.input:
        if inp.name in inits:
            continue
        tt = inp.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
        specs[inp.name] = (shape, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name)
    return specs


def ordered_names(model: Any, sample: dict[str, np.ndarray]) -> list[str]:
    """Input names in forward() order (a single input keeps its own name).

    Raises:
        InputError: an array that matches no forward() parameter.
    """
    if len(sample) == 1:
        return list(sample)
    params = [p for p in inspect.signature(model.forward).parameters if p in sample]
    missing = set(sample) - set(params)
    if missing:
        raise InputError(f"data arrays {sorted(missing)} match no forward() parameter of the model")
    return params


def _known_op(op_type: str, domain: str) -> bool:
    import onnx

    if domain in ("", "ai.onnx", "ai.onnx.ml"):
        return bool(onnx.defs.has(op_type, domain))
    return domain == "com.microsoft"  # contrib ops: onnxruntime decides at session creation
