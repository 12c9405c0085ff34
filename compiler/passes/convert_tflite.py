"""TFLite pass: PyTorch -> fp32 `.tflite` with litert-torch, then int8 with ai-edge-quantizer.

Owns the two-step path Google now recommends (quantizing inside the converter is deprecated): convert
to an fp32 LiteRT model, then quantize that file. `dynamic` = int8 weights, float activations
(dynamic range); `full` = int8 weights and activations with int8 input/output (what the Edge TPU
compiler and MCUs need), calibrated on sample data. Shapes are static: batch 1. Does not run the
Edge TPU compiler (not installable here) and does not measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compiler._util import stdout_to_stderr
from compiler.data import Dataset
from compiler.errors import InputError, UnsupportedError

if TYPE_CHECKING:
    import torch

TFLITE_KINDS = ("dynamic", "full")


def convert_fp32(model: torch.nn.Module, sample: dict[str, np.ndarray], out: Path, *, batch: int = 1) -> Path:
    """Convert an eval-mode torch model to an fp32 `.tflite` with static shapes (batch `batch`).

    `sample` holds the inputs in forward() order; its first `batch` samples fix the shapes.

    Raises:
        UnsupportedError: litert-torch cannot lower the model (its message names the op).
    """
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(v[:batch])) for v in sample.values())
    try:
        with stdout_to_stderr():
            import litert_torch  # type: ignore[import-untyped]

            litert_torch.convert(model, args).export(str(out))
    except Exception as err:
        raise UnsupportedError(f"litert-torch conversion failed: {type(err).__name__}: {err}") from err
    return out


def quantize_tflite(
    fp32: Path, out: Path, kind: str, calib: Dataset | None = None, *, samples: int = 128
) -> Path:
    """Quantize an fp32 `.tflite` with ai-edge-quantizer.

    Raises:
        InputError: unknown kind, or `full` without calibration data.
        UnsupportedError: the quantizer failed on this model.
    """
    if kind not in TFLITE_KINDS:
        raise InputError(f"tflite quantization {kind!r}; choose one of {TFLITE_KINDS}")
    if kind == "full" and calib is None:
        raise InputError("full-integer quantization needs calibration data")
    try:
        with stdout_to_stderr():
            _quantize(fp32, out, kind, calib, samples)
    except (InputError, UnsupportedError):
        raise
    except Exception as err:
        raise UnsupportedError(f"ai-edge-quantizer failed ({kind}): {type(err).__name__}: {err}") from err
    return out


def _quantize(fp32: Path, out: Path, kind: str, calib: Dataset | None, samples: int) -> None:
    from ai_edge_quantizer import quantizer, recipe  # type: ignore[import-untyped]

    q = quantizer.Quantizer(str(fp32))
    if kind == "dynamic":
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        q.quantize().export_model(str(out), overwrite=True)
        return
    assert calib is not None
    q.load_quantization_recipe(recipe.static_wi8_ai8())
    signature, names, batch = _signature(fp32)
    if len(names) != len(calib.inputs):
        raise InputError(f"calibration has {len(calib.inputs)} inputs, the model {len(names)}")
    arrays = list(calib.inputs.values())
    feed = [
        {name: arr[i : i + batch] for name, arr in zip(names, arrays, strict=True)}
        for i in range(0, min(samples, len(calib)) - batch + 1, batch)
    ]
    result = q.calibrate({signature: feed})
    q.quantize(result).export_model(str(out), overwrite=True)


def _signature(path: Path) -> tuple[str, list[str], int]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(str(path))
    sigs = it.get_signature_list()
    name = next(iter(sigs))
    return name, list(sigs[name]["inputs"]), int(it.get_input_details()[0]["shape"][0])
