"""Compiler error tree (exit codes 50-69).

CompilerError
├── InputError        the model/data/profile given is unusable; fix the input
├── UnsupportedError  the model uses ops a target cannot run (message lists them)
└── BudgetError       no candidate met the accuracy/size/latency budget
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    USAGE = 2
    INPUT = 50
    UNSUPPORTED = 51
    BUDGET = 52
    INTERNAL = 69


class CompilerError(Exception):
    exit_code: ExitCode = ExitCode.INTERNAL


class InputError(CompilerError):
    exit_code = ExitCode.INPUT


class UnsupportedError(CompilerError):
    exit_code = ExitCode.UNSUPPORTED


class BudgetError(CompilerError):
    exit_code = ExitCode.BUDGET
