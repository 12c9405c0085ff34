"""Device profiles (`firmware_images/<name>.toml`): what a device class can run and its budgets.

Owns parsing and validation into frozen dataclasses (stdlib `tomllib` only), including the
custom-op libraries a device class declares for its runtimes::

    [runtime.custom_ops]
    onnxruntime = ["libmyops.so"]            # SessionOptions.register_custom_ops_library(path)
    litert = [{ library = "libtflops.so", registerers = ["RegisterMyOps"] }]

Relative library paths are resolved against the profile's folder (``firmware_images/<name>/``), so a
device class ships its libraries beside its profile. Whether a library exists is checked by the
backend when it loads a model (the compiler reads the same profiles on a host without them). Does
not choose a backend: `agent.inference` and the compiler read `RuntimeSpec` and decide.

A class whose devices micro-batch concurrent requests says up to how many samples (the compiler
then judges quality at that batch too, and the agent never forms a larger batch; the agent's own
``[inference]`` config still decides whether it micro-batches)::

    [serving]
    micro_batch = 32                         # absent: devices serve batch 1

onnxruntime serves a cheap model (a call under ~1 ms, inputs of fixed size) with one intra-op thread
instead of ``runtime.threads`` when it is not slower so (timed at load, see
`agent.inference.onnx_backend`); ``threads_auto = false`` under ``[runtime]`` pins ``threads``.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

RUNTIMES = frozenset({"onnxruntime", "litert"})
DELEGATES = frozenset({"xnnpack", "edgetpu", "none"})
QUANTIZATIONS = frozenset({"fp32", "fp16", "int8-static", "int8-dynamic", "int8-full"})


@dataclass(frozen=True)
class LiteRTCustomOps:
    """One LiteRT custom-op library and the registerer functions it exports.

    Each registerer is a C symbol ``void Name(tflite::MutableOpResolver*)``; the library is loaded
    (RTLD_GLOBAL) before the interpreter is built, which looks the names up.
    """

    library: str
    registerers: tuple[str, ...]


@dataclass(frozen=True)
class RuntimeSpec:
    preferred: str
    fallback: str
    execution_providers: tuple[str, ...]
    delegate: str
    threads: int
    onnx_custom_op_libraries: tuple[str, ...] = ()  # absolute paths after loading
    litert_custom_ops: tuple[LiteRTCustomOps, ...] = ()
    # [runtime] threads_auto: onnxruntime may serve a cheap model on one intra-op thread (false: `threads`)
    threads_auto: bool = True


@dataclass(frozen=True)
class Budget:
    ram_bytes: int
    disk_bytes: int
    model_bytes: int
    latency_p95_ms: float


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    arch: str
    runtime: RuntimeSpec
    quantization: tuple[str, ...]
    budget: Budget
    slots_root: str
    micro_batch: int | None = None  # [serving] micro_batch: samples per micro-batch (None: batch 1)


def profiles_dir() -> Path:
    """`$EDGELOOP_PROFILES_DIR`, else the `firmware_images/` folder of this source tree."""
    env = os.environ.get("EDGELOOP_PROFILES_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "firmware_images"


def available_profiles(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or profiles_dir()).glob("*.toml"))


def load_profile(name: str, directory: Path | None = None) -> DeviceProfile:
    """Load and validate one profile by name.

    Raises:
        ConfigError: unknown profile (the message lists the known ones) or an invalid file.
    """
    base = directory or profiles_dir()
    path = base / f"{name}.toml"
    if not path.is_file():
        known = ", ".join(available_profiles(base)) or "none"
        raise ConfigError(f"unknown device profile {name!r}; known profiles: {known}")
    try:
        raw = tomllib.loads(path.read_text())
        return _parse(raw, base / name)
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"invalid device profile {path}: {err}") from err


def _parse(raw: dict[str, Any], folder: Path | None = None) -> DeviceProfile:
    rt = raw["runtime"]
    onnx_libs, litert_ops = _custom_ops(rt.get("custom_ops", {}), folder or profiles_dir())
    runtime = RuntimeSpec(
        preferred=str(rt["preferred"]),
        fallback=str(rt.get("fallback", rt["preferred"])),
        execution_providers=tuple(str(p) for p in rt.get("execution_providers", [])),
        delegate=str(rt.get("delegate", "none")),
        threads=int(rt.get("threads", 1)),
        onnx_custom_op_libraries=onnx_libs,
        litert_custom_ops=litert_ops,
        threads_auto=_bool(rt.get("threads_auto", True), "runtime.threads_auto"),
    )
    for value, allowed, what in (
        (runtime.preferred, RUNTIMES, "runtime.preferred"),
        (runtime.fallback, RUNTIMES, "runtime.fallback"),
        (runtime.delegate, DELEGATES, "runtime.delegate"),
    ):
        if value not in allowed:
            raise ValueError(f"{what}={value!r}, expected one of {sorted(allowed)}")
    quant = tuple(str(q) for q in raw["quantization"]["supported"])
    unknown = set(quant) - QUANTIZATIONS
    if unknown:
        raise ValueError(f"unknown quantization kinds {sorted(unknown)}")
    b = raw["budget"]
    budget = Budget(
        ram_bytes=int(b["ram_bytes"]),
        disk_bytes=int(b["disk_bytes"]),
        model_bytes=int(b["model_bytes"]),
        latency_p95_ms=float(b["latency_p95_ms"]),
    )
    return DeviceProfile(
        name=str(raw["name"]),
        description=str(raw.get("description", "")),
        arch=str(raw.get("arch", "")),
        runtime=runtime,
        quantization=quant,
        budget=budget,
        slots_root=str(raw.get("slots", {}).get("root", "/var/lib/edgeloop/models")),
        micro_batch=_micro_batch(raw.get("serving", {})),
    )


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}={value!r}, expected true or false")
    return value


def _micro_batch(serving: Any) -> int | None:
    """``[serving] micro_batch``: an integer >= 2, or absent.

    Raises:
        ValueError: not a table, or not an integer >= 2 (the message names the key).
    """
    if not isinstance(serving, dict):
        raise ValueError("serving must be a table")
    value = serving.get("micro_batch")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(
            f"serving.micro_batch={value!r}: give an integer >= 2 (leave it out when devices serve batch 1)"
        )
    return value


def _custom_ops(raw: Any, folder: Path) -> tuple[tuple[str, ...], tuple[LiteRTCustomOps, ...]]:
    """Parse ``[runtime.custom_ops]``; paths resolved against the profile's folder.

    Raises:
        ValueError: an unknown key or a value of the wrong type (the message names the key).
    """
    if not isinstance(raw, dict):
        raise ValueError("runtime.custom_ops must be a table")
    unknown = set(raw) - {"onnxruntime", "litert"}
    if unknown:
        raise ValueError(f"runtime.custom_ops has unknown keys {sorted(unknown)}; use onnxruntime, litert")
    onnx = raw.get("onnxruntime", [])
    if not isinstance(onnx, list) or not all(isinstance(p, str) and p for p in onnx):
        raise ValueError("runtime.custom_ops.onnxruntime must be a list of library paths")
    litert = raw.get("litert", [])
    if not isinstance(litert, list):
        raise ValueError("runtime.custom_ops.litert must be a list of {library, registerers} tables")
    entries = []
    for entry in litert:
        library = entry.get("library") if isinstance(entry, dict) else None
        registerers = entry.get("registerers") if isinstance(entry, dict) else None
        if (
            not isinstance(library, str)
            or not library
            or not isinstance(registerers, list)
            or not registerers
            or not all(isinstance(r, str) and r.isidentifier() for r in registerers)
        ):
            raise ValueError(
                'each runtime.custom_ops.litert entry needs library = "path" and '
                'registerers = ["CSymbolName", ...]'
            )
        entries.append(LiteRTCustomOps(str(folder / library), tuple(registerers)))
    return tuple(str(folder / p) for p in onnx), tuple(entries)
