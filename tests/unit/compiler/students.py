"""A small student CNN for the distillation tests (`module:factory` usable from the CLI)."""

from __future__ import annotations

from torch import nn


def make_small_student() -> nn.Module:
    """conv(1->8) -> pool -> fc(128->32) -> fc(32->10): ~4.5k params."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def make_identity_student() -> nn.Module:
    """Not prunable: a single Linear (used to test the 'nothing prunable' error)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
