"""Compiler error tree (exit codes 50-69).

CompilerError
├── InputError        the model/data/profile given is unusable; fix the input
├── UnsupportedError  the model uses ops a target cannot run (message lists them)
├── BudgetError       no candidate met the accuracy/size/latency budget (or a quantized file lost
│                     more quality than the budget allows)
└── NoEffectError     quantization did nothing useful: no weight was quantized, or the file grew
                      (`--allow-noop` writes it anyway)

An error may carry `details` (a JSON-able dict: measured effect and quality) that `--json` prints.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any


class ExitCode(IntEnum):
    OK = 0
    USAGE = 2
    INPUT = 50
    UNSUPPORTED = 51
    BUDGET = 52
    NO_EFFECT = 53
    INTERNAL = 69


class CompilerError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.details = details or {}


class InputError(CompilerError):
    exit_code = ExitCode.INPUT


class UnsupportedError(CompilerError):
    exit_code = ExitCode.UNSUPPORTED


class BudgetError(CompilerError):
    exit_code = ExitCode.BUDGET


class NoEffectError(CompilerError):
    exit_code = ExitCode.NO_EFFECT
