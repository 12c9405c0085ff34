"""Knowledge distillation: train a smaller student from a teacher, and report whether it helped.

Owns the KD loss `alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE` and the honest
comparison: the same student architecture, optimizer, epochs and seed trained with CE alone. KD does
not always help (measured on digits: no gain at 40 or 100 epochs), so both students are returned and
the report says which one is better. Does not choose architectures.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from compiler.data import Dataset
from compiler.errors import InputError
from compiler.passes import _train

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DistillReport:
    temperature: float
    alpha: float
    epochs: int
    teacher_params: int
    student_params: int
    teacher_accuracy: float
    student_alone_accuracy: float
    distilled_accuracy: float

    @property
    def distillation_helped(self) -> bool:
        return self.distilled_accuracy > self.student_alone_accuracy


def make_student(factory: str) -> torch.nn.Module:
    """Instantiate a `module:factory` student.

    Raises:
        InputError: the factory cannot be imported or called.
    """
    try:
        module, name = factory.split(":")
        return getattr(importlib.import_module(module), name)()  # type: ignore[no-any-return]
    except Exception as err:
        raise InputError(f"cannot build student {factory!r}: {type(err).__name__}: {err}") from err


def distill(
    teacher: torch.nn.Module,
    student_factory: str,
    train: Dataset,
    evaluation: Dataset,
    *,
    temperature: float = 4.0,
    alpha: float = 0.7,
    epochs: int = 40,
    seed: int = 0,
) -> tuple[torch.nn.Module, torch.nn.Module, DistillReport]:
    """Train the student with KD and alone; return (distilled, alone, report).

    Raises:
        InputError: unlabelled data or an unusable student factory.
    """
    import torch
    import torch.nn.functional as F

    teacher = teacher.eval()

    def kd(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        soft = F.kl_div(
            F.log_softmax(logits / temperature, 1), F.softmax(t / temperature, 1), reduction="batchmean"
        )
        return alpha * temperature**2 * soft + (1 - alpha) * F.cross_entropy(logits, y)

    def ce(logits: torch.Tensor, _x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y)

    torch.manual_seed(seed)
    distilled = _train.train(make_student(student_factory), train, kd, epochs=epochs, seed=seed)
    torch.manual_seed(seed)
    alone = _train.train(make_student(student_factory), train, ce, epochs=epochs, seed=seed)
    report = DistillReport(
        temperature,
        alpha,
        epochs,
        _train.param_count(teacher),
        _train.param_count(alone),
        _train.accuracy(teacher, evaluation),
        _train.accuracy(alone, evaluation),
        _train.accuracy(distilled, evaluation),
    )
    return distilled, alone, report
