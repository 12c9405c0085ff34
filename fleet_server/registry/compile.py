"""Running the compiler for a registry version: a port, and the adapter that runs `edgeloop-compile`.

Nothing imports `compiler` (dependency rule 3), so the fleet server runs it as a separate process
(`python -m compiler build ... --json`), which also keeps torch out of the server's memory and
lets a compile crash only that process. The adapter reads the report the compiler wrote and
returns it; it never decides anything about the version (that is `registry.service`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


class CompileFailed(Exception):
    """The compiler refused or failed: the version is marked failed with this message."""


@dataclass(frozen=True)
class CompileJob:
    model: Path  # fp32 ONNX
    profiles: tuple[str, ...]
    calib: Path
    evaluation: Path
    out: Path
    budgets: dict[str, float] = field(default_factory=dict)  # max_accuracy_drop, min_agreement, ...
    prefer_recipes: dict[str, str] = field(default_factory=dict)  # profile -> the parent's recipe
    batched_inputs: tuple[str, ...] | None = None  # None: the model says; (): no input is batched
    micro_batch: int | None = None  # None: each profile's [serving] micro_batch; 1: batch 1 only
    drift_budget_per_10k: float | None = None  # None: the drift monitor's default budget


class Compiler(Protocol):
    def build(self, job: CompileJob) -> dict[str, Any]:
        """Build and validate one artifact per profile; returns the report. Raises: CompileFailed."""
        ...


_BUDGET_FLAGS = {
    "max_accuracy_drop": "--max-accuracy-drop",
    "min_agreement": "--min-agreement",
    "min_cosine": "--min-cosine",
    "latency_tolerance": "--latency-tolerance",
}


@dataclass
class SubprocessCompiler:
    """`edgeloop-compile build` in a child process (the compiler extra must be installed)."""

    command: tuple[str, ...] = (sys.executable, "-m", "compiler")
    timeout_s: float = 1800.0

    def build(self, job: CompileJob) -> dict[str, Any]:
        argv = [*self.command, "build", "--model", str(job.model), "--calib", str(job.calib)]
        argv += ["--eval", str(job.evaluation), "--out", str(job.out), "--force", "--json"]
        for profile in job.profiles:
            argv += ["--profile", profile]
        for key, value in sorted(job.budgets.items()):
            if key in _BUDGET_FLAGS:
                argv += [_BUDGET_FLAGS[key], str(value)]
        for profile, recipe in sorted(job.prefer_recipes.items()):
            argv += ["--prefer-recipe", f"{profile}={recipe}"]
        if job.batched_inputs is not None:
            argv += ["--batched-inputs", ",".join(job.batched_inputs)]
        if job.micro_batch is not None:
            argv += ["--micro-batch", str(job.micro_batch)]
        if job.drift_budget_per_10k is not None:
            argv += ["--drift-budget", repr(job.drift_budget_per_10k)]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except FileNotFoundError as err:
            raise CompileFailed(
                f"compiler not found ({self.command[0]}): install edgeloop[compiler]"
            ) from err
        except subprocess.TimeoutExpired as err:
            raise CompileFailed(f"compiler timed out after {self.timeout_s:.0f}s") from err
        if done.returncode != 0:
            raise CompileFailed(_error_text(done.stdout, done.stderr, done.returncode))
        report_path = job.out / "report.json"
        try:
            report: dict[str, Any] = json.loads(report_path.read_text())
        except (OSError, ValueError) as err:
            raise CompileFailed(f"compiler exited 0 but its report is unreadable: {err}") from err
        return report


def _error_text(stdout: str, stderr: str, code: int) -> str:
    try:
        doc = json.loads(stdout)
        if isinstance(doc, dict) and "error" in doc:
            return f"compiler exit {code}: {doc['error']}: {doc.get('message', '')}"[:1000]
    except ValueError:
        pass
    if "No module named" in stderr and "compiler" in stderr:
        return "the compiler is not installed on the fleet server: pip install edgeloop[compiler]"
    tail = (stderr.strip().splitlines() or [""])[-1]
    return f"compiler exit {code}: {tail}"[:1000]
