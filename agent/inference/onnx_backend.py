"""onnxruntime adapter for `InferenceRuntime` (the only module that imports onnxruntime).

Owns session creation with the profile's execution providers (absent providers are skipped with a
warning; CPU is always last), the profile's custom-op libraries (`register_custom_ops_library`; a
missing file or a library onnxruntime refuses is a `BackendUnavailableError` naming it), thread
settings (one intra-op thread for a cheap model when it is not slower, see `OnnxRuntime`), the
signature read from the session (which inputs are batched: the model's ``edgeloop.batched_inputs``
metadata, else the symbolic first dimensions), and translation of onnxruntime exceptions into
`ModelLoadError` / `BackendCrashedError`. Does not validate requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BackendCrashedError, BackendUnavailableError, ModelLoadError
from agent.inference.signature import BATCHED_INPUTS_KEY, Shape, Signature, TensorSpec, declare_batched
from agent.inference.warmup import zeros_for

logger = logging.getLogger(__name__)

CPU_EP = "CPUExecutionProvider"

# Automatic intra-op threads (bench/inference/thread_crossover.py, numbers in BENCHMARKS.md): after an
# idle gap onnxruntime must wake its pool threads (~15-30 µs, no spin-waiting), which a cheap model does
# not win back; between ~0.1 and ~0.5 ms it depends on the graph (some gain 25% from 2 threads, some
# lose 10%), so models under the cap are timed with both thread counts and the faster kept.
AUTO_PROBE_CAP_S = 1e-3  # a call at least this slow keeps the profile's threads, untimed further
AUTO_PROBE_RUNS = 15  # timed calls per thread count (after one untimed call), each after an idle gap
AUTO_PROBE_GAP_S = 200e-6  # the idle gap before each timed call (a served request follows one)
AUTO_TIE = 1.05  # one thread is kept unless the profile's threads are >5% faster (it frees a core)

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
        auto_threads: bool = True,
        probe_cap_s: float = AUTO_PROBE_CAP_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        """Create the session.

        With `auto_threads` (the profile's ``runtime.threads_auto``, on by default), more than one
        thread, only the CPU provider and inputs of fixed size (but the batch: a free sequence length
        or image size would be timed at 1 on zeros, far cheaper than served, so such models keep the
        profile's threads), the model is timed on zeros (median of `AUTO_PROBE_RUNS`
        calls, each after an idle gap, timed by `clock`). A model whose call takes `probe_cap_s` or
        more keeps the profile's threads; a cheaper one is also timed in a one-thread session, which
        is kept unless the profile's threads are more than 5% faster. A probe that fails (zeros
        the model cannot take) keeps the profile's threads. `threads` and `backend` say what was
        chosen; the load log line says why. Other providers (TensorRT, CUDA) are never probed: their
        session is costly to build twice and runs little on the CPU pool.

        Raises:
            BackendUnavailableError: onnxruntime is not installed, or a custom-op library is missing
                or refused by onnxruntime.
            ModelLoadError: the file is missing, corrupt or not loadable, or its
                ``edgeloop.batched_inputs`` metadata names unknown or 0-d inputs.
        """
        self._artifact = artifact
        self._custom_op_libraries = tuple(custom_op_libraries)
        self._threads = max(1, threads)
        self._session = self._open(self._threads, providers)
        self._providers = tuple(self._session.get_providers())
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
        if auto_threads and self._threads > 1 and self._providers == (CPU_EP,):
            self._auto_threads(probe_cap_s, clock)
        self._backend = f"onnxruntime[{','.join(self._providers)}] threads={self._threads}"

    def _open(self, threads: int, providers: Sequence[str]) -> Any:
        ort = _import_ort()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        # No spin-waiting between calls: the agent shares a small CPU with the applications it serves.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        for library in self._custom_op_libraries:
            _register_library(options, library)
        chosen = choose_providers(providers, ort.get_available_providers())
        try:
            return ort.InferenceSession(str(self._artifact), sess_options=options, providers=chosen)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            raise ModelLoadError(f"onnxruntime cannot load {self._artifact}: {err}") from err

    def _auto_threads(self, cap_s: float, clock: Callable[[], float]) -> None:
        """Keep one intra-op thread instead of the profile's when the model is cheap and not slower."""
        name, threads = self._artifact.name, self._threads
        if _free_sizes(self._signature):
            logger.info(
                "keeping threads=%d artifact=%s: input sizes other than the batch are free", threads, name
            )
            return
        inputs = zeros_for(self._signature)
        try:
            cost = _probe_cost(self._session, inputs, clock)
            if cost >= cap_s:
                logger.info(
                    "keeping threads=%d artifact=%s: call %.0f µs >= %.0f µs",
                    threads,
                    name,
                    cost * 1e6,
                    cap_s * 1e6,
                )
                return
            single = self._open(1, self._providers)
            single_cost = _probe_cost(single, inputs, clock)
        except Exception as err:  # onnxruntime raises its own pybind exception types
            logger.info(
                "thread probe on zeros failed, keeping threads=%d artifact=%s: %s", threads, name, err
            )
            return
        verdict = f"call {single_cost * 1e6:.0f} µs with 1 thread vs {cost * 1e6:.0f} µs with {threads}"
        if cost * AUTO_TIE < single_cost:
            logger.info("keeping threads=%d artifact=%s: %s", threads, name, verdict)
            return
        self._session, self._threads = single, 1
        logger.info("one intra-op thread instead of %d artifact=%s: %s", threads, name, verdict)

    @property
    def threads(self) -> int:
        """The session's intra-op thread count (1 when the automatic rule chose it)."""
        return self._threads

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


def _free_sizes(signature: Signature) -> bool:
    """Whether an input has a free size besides the batch (zeros of size 1 would understate the cost)."""
    return any(
        d is None for spec in signature.inputs for d in (spec.shape[1:] if spec.is_batched else spec.shape)
    )


def _probe_cost(session: Any, inputs: dict[str, np.ndarray], clock: Callable[[], float]) -> float:
    """The median seconds of `AUTO_PROBE_RUNS` calls, each after an idle gap (one untimed call first)."""
    session.run(None, inputs)
    costs = []
    for _ in range(AUTO_PROBE_RUNS):
        time.sleep(AUTO_PROBE_GAP_S)
        started = clock()
        session.run(None, inputs)
        costs.append(clock() - started)
    return float(np.median(costs))


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
