"""ONNX int8 quantization pass (onnxruntime.quantization).

Owns: static QDQ per-channel quantization with calibration (MinMax, Entropy, Percentile), dynamic
per-channel quantization (MatMul-heavy / transformer models), node exclusion for mixed precision,
and the per-node error ranking that drives it. Does not decide which recipe a device gets (that is
`compiler.pipeline`), and does not measure speed.

Weights inside `If`/`Loop`/`Scan` bodies are quantized by the dynamic recipe (Constant nodes are
lifted to initializers first, and ORT's `EnableSubgraph` is on); static QDQ cannot reach them, and
`compiler.effect` says so rather than this module guessing.

Measured here: dynamic int8 makes a small CNN 5-8x *slower* (ConvInteger) while static QDQ makes
it faster; per-tensor dynamic quantization of MiniLM-L6 drops cosine to 0.966 where per-channel
keeps 0.993. The search finds such things by measuring; this module only builds.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from compiler.data import Dataset
from compiler.errors import InputError, UnsupportedError

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm", "Gather", "ConvTranspose")


def preprocess(fp32: Path, out: Path) -> Path:
    """ORT's recommended pre-processing: symbolic shape inference and graph optimisation.

    Falls back to skipping symbolic shape inference when it fails (some dynamo exports).
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32), str(out))
    except Exception as err:
        logger.info("symbolic shape inference failed (%s); retrying without it", type(err).__name__)
        quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
    _lift_constants(out)
    return out


def _lift_constants(path: Path) -> None:
    """Weights held as Constant nodes (common in If/Loop bodies) become initializers, which ORT quantizes."""
    import onnx

    from compiler._graphs import lift_constants

    model = onnx.load(str(path))
    lifted = lift_constants(model)
    if lifted:
        logger.info("lifted %d weight constants to initializers", lifted)
        onnx.save(model, str(path))


def quantize_static(
    fp32: Path,
    out: Path,
    calib: Dataset,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    batch_size: int = 32,
) -> Path:
    """Static QDQ int8 (S8 weights, U8 activations) with calibration over `calib`.

    Raises:
        InputError: unknown calibration method, or calibration data that does not fit the model.
        UnsupportedError: onnxruntime could not quantize the graph.
    """
    from onnxruntime import quantization as q

    if method not in CALIBRATION_METHODS:
        raise InputError(f"calibration method {method!r}; choose one of {CALIBRATION_METHODS}")
    calibrate = {
        "minmax": q.CalibrationMethod.MinMax,
        "entropy": q.CalibrationMethod.Entropy,
        "percentile": q.CalibrationMethod.Percentile,
    }[method]
    reader = _Reader(calib, batch_size)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = preprocess(fp32, Path(tmp) / "pre.onnx")
        _run_quiet(
            lambda: q.quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=q.QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=q.QuantType.QUInt8,
                weight_type=q.QuantType.QInt8,
                calibrate_method=calibrate,
                nodes_to_exclude=list(exclude),
                extra_options={"CalibTensorRangeSymmetric": False},
            )
        )
    return out


def quantize_dynamic(fp32: Path, out: Path, *, per_channel: bool = True, exclude: Sequence[str] = ()) -> Path:
    """Dynamic int8 (weights int8 offline, activations quantized at run time), per channel.

    Raises:
        UnsupportedError: onnxruntime could not quantize the graph.
    """
    from onnxruntime import quantization as q

    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        pre = preprocess(fp32, Path(tmp) / "pre.onnx")
        _run_quiet(
            lambda: q.quantize_dynamic(
                str(pre),
                str(out),
                weight_type=q.QuantType.QInt8,
                per_channel=per_channel,
                nodes_to_exclude=list(exclude),
                # FLOAT for tensors shape inference left untyped; EnableSubgraph: also the weights
                # inside If/Loop/Scan bodies (static QDQ has no such option: `effect` reports it).
                extra_options={"DefaultTensorType": 1, "EnableSubgraph": True},
            )
        )
    return out


def weighted_nodes(path: Path) -> list[str]:
    """Names of the nodes quantization acts on (Conv/MatMul/Gemm/Gather), in graph order."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    return [n.name for n in graph.node if n.op_type in WEIGHTED_OPS and any(i in inits for i in n.input)]


def rank_sensitive_nodes(
    fp32: Path, quant: Path, data: Dataset, *, samples: int = 64
) -> list[tuple[str, float]]:
    """Rank weighted nodes by how much quantization error they add (largest first).

    For each weighted node, the relative L2 error of its output tensor in `quant` vs `fp32` is
    measured on `samples` inputs; a node's score is its error minus the largest error among its
    weighted ancestors' outputs (error it adds, not error it inherits).
    """
    import onnx

    graph = onnx.load(str(fp32)).graph
    nodes = {n.name: n for n in graph.node}
    names = [n for n in weighted_nodes(fp32) if n in nodes]
    outputs = {n: nodes[n].output[0] for n in names}
    ref = intermediates(fp32, outputs.values(), data.head(samples))
    got = intermediates(quant, outputs.values(), data.head(samples))
    err = {n: _rel_err(ref[t], got[t]) for n, t in outputs.items() if t in ref and t in got}
    ancestors = _weighted_ancestors(graph, set(err))
    added = {n: e - max((err[a] for a in ancestors[n]), default=0.0) for n, e in err.items()}
    return sorted(added.items(), key=lambda kv: kv[1], reverse=True)


class _Reader:
    """onnxruntime CalibrationDataReader over a Dataset, in batches."""

    def __init__(self, data: Dataset, batch_size: int) -> None:
        self._data, self._batch = data, batch_size
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        yield from self._data.calls(self._batch)  # one sample per call for stateful models

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def _run(fn: object) -> None:
    try:
        fn()  # type: ignore[operator]
    except (InputError, UnsupportedError):
        raise
    except Exception as err:
        if "shape" in str(err).lower() or "dimension" in str(err).lower():
            raise InputError(f"calibration data does not fit the model: {err}") from err
        raise UnsupportedError(f"onnxruntime quantization failed: {type(err).__name__}: {err}") from err


def intermediates(path: Path, tensors: object, data: Dataset) -> dict[str, np.ndarray]:
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    have = {o.name for o in proto.graph.output}
    produced = {o for n in proto.graph.node for o in n.output}
    names = list(tensors)  # type: ignore[call-overload]
    found = {t: data.inputs[t] for t in names if t in data.inputs}  # graph inputs feed some nodes directly
    wanted = [t for t in names if t in produced]
    if not wanted:
        return found
    proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted if t not in have)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "m.onnx"
        onnx.save(proto, str(p))
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        if not data.stateful:
            res = sess.run(wanted, data.inputs)
        else:  # non-batched inputs (a state, a 0-d constant): one complete feed per sample, joined
            runs = [sess.run(wanted, feed) for feed in data.calls()]
            res = [_join([r[i] for r in runs]) for i in range(len(wanted))]
    return found | dict(zip(wanted, res, strict=True))


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """Per-call activations as one array over the samples (batch axis first when there is one)."""
    if all(p.ndim and p.shape[0] == 1 for p in parts):
        return np.concatenate(parts, axis=0)
    return np.stack(parts)


def _rel_err(ref: np.ndarray, got: np.ndarray) -> float:
    ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
    return float(np.linalg.norm(ref64 - got64) / (np.linalg.norm(ref64) + 1e-12))


def _weighted_ancestors(graph: object, weighted: set[str]) -> dict[str, set[str]]:
    producer = {o: n for n in graph.node for o in n.output}  # type: ignore[attr-defined]
    memo: dict[str, set[str]] = {}

    def visit(node: object) -> set[str]:
        name = node.name  # type: ignore[attr-defined]
        if name not in memo:
            memo[name] = set()
            found: set[str] = set()
            for i in node.input:  # type: ignore[attr-defined]
                if i in producer:
                    p = producer[i]
                    found |= ({p.name} if p.name in weighted else set()) | visit(p)
            memo[name] = found
        return memo[name]

    return {n.name: visit(n) for n in graph.node if n.name in weighted}  # type: ignore[attr-defined]


def copy_model(src: Path, dst: Path) -> Path:
    """The fp32 'recipe': the exported model as is."""
    shutil.copyfile(src, dst)
    return dst


def _run_quiet(fn: object) -> None:
    from compiler._util import stdout_to_stderr

    with stdout_to_stderr():
        _run(fn)
