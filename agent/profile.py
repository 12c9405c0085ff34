"""Device profiles (`firmware_images/<name>.toml`): what a device class can run and its budgets.

Owns parsing and validation into frozen dataclasses (stdlib `tomllib` only). Does not choose a
backend: `agent.inference` and the compiler read `RuntimeSpec` and decide.
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
class RuntimeSpec:
    preferred: str
    fallback: str
    execution_providers: tuple[str, ...]
    delegate: str
    threads: int


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
        return _parse(raw)
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"invalid device profile {path}: {err}") from err


def _parse(raw: dict[str, Any]) -> DeviceProfile:
    rt = raw["runtime"]
    runtime = RuntimeSpec(
        preferred=str(rt["preferred"]),
        fallback=str(rt.get("fallback", rt["preferred"])),
        execution_providers=tuple(str(p) for p in rt.get("execution_providers", [])),
        delegate=str(rt.get("delegate", "none")),
        threads=int(rt.get("threads", 1)),
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
    )
