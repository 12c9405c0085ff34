"""Shared short training loop for the passes that fine-tune (prune) or train (distill)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from compiler.data import Dataset
from compiler.errors import InputError

if TYPE_CHECKING:
    import torch

LossFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # (logits, x, y) -> loss


def train(
    model: torch.nn.Module, data: Dataset, loss_fn: LossFn, *, epochs: int, lr: float = 3e-3, seed: int = 0
) -> torch.nn.Module:
    """Adam with a cosine schedule over `epochs` passes of batch 64; returns the model in eval mode."""
    import torch

    x, y = tensors(data)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = max(1, epochs * ((len(x) + 63) // 64))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(model(x[idx]), x[idx], y[idx])
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
    return model.eval()


def tensors(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The single input array and the labels as tensors.

    Raises:
        InputError: no labels, or more than one input array.
    """
    import torch

    if data.labels is None:
        raise InputError(f"{data.source}: training needs labels (an array named y)")
    if len(data.inputs) != 1:
        raise InputError(f"{data.source}: training supports single-input models only")
    x = np.ascontiguousarray(next(iter(data.inputs.values())), dtype=np.float32)
    return torch.from_numpy(x), torch.from_numpy(data.labels)


def accuracy(model: torch.nn.Module, data: Dataset) -> float:
    """Top-1 accuracy of a torch classifier on labelled data."""
    import torch

    x, y = tensors(data)
    with torch.no_grad():
        return float((model.eval()(x).argmax(dim=1) == y).float().mean())


def param_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
