"""Structured channel pruning with a short fine-tune.

Owns finding prunable producer/consumer pairs with torch.fx (a Conv2d/Linear whose output reaches
exactly one Conv2d/Linear through channel-wise ops: ReLU, pooling, dropout, BatchNorm2d, Flatten),
removing the lowest-L1 output channels of the producer and the matching inputs of the consumer, so
the network is physically narrower: fewer MACs, smaller dense file, faster on every runtime. The
last layer (model outputs) and layers with several consumers (residuals) are left whole.

Unstructured (magnitude) sparsity is offered only as a measured report (`unstructured_report`): it
leaves a dense file the same size and dense kernels the same speed; it only helps a *compressed*
download, which the report shows with the same model exported before and after.
"""

from __future__ import annotations

import copy
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compiler.data import Dataset
from compiler.errors import UnsupportedError
from compiler.passes import _train

if TYPE_CHECKING:
    import torch

_PASS_MODULES = (
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "SiLU",
    "GELU",
    "Tanh",
    "Sigmoid",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "Dropout",
    "Identity",
    "BatchNorm2d",
    "Flatten",
)


@dataclass(frozen=True)
class PruneReport:
    keep: float
    params_before: int
    params_after: int
    pruned_layers: tuple[str, ...]
    accuracy_before: float
    accuracy_pruned: float
    accuracy_finetuned: float


def prune_channels(model: torch.nn.Module, keep: float) -> tuple[torch.nn.Module, list[str]]:
    """Return a narrower copy of `model` keeping `keep` of each prunable layer's channels.

    Raises:
        UnsupportedError: torch.fx cannot trace the model, or nothing in it is prunable.
    """
    import torch

    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as err:
        raise UnsupportedError(f"structured pruning needs an fx-traceable model: {err}") from err
    pairs = _pairs(gm)
    if not pairs:
        raise UnsupportedError("no prunable Conv2d/Linear -> Conv2d/Linear pairs found")
    for producer, bn, consumer in pairs:
        _prune_pair(gm, producer, bn, consumer, keep)
    gm.recompile()
    return gm, [p for p, _, _ in pairs]


def prune_and_finetune(
    model: torch.nn.Module,
    train: Dataset,
    evaluation: Dataset,
    *,
    keep: float = 0.5,
    epochs: int = 10,
    lr: float = 1e-3,
) -> tuple[torch.nn.Module, PruneReport]:
    """Prune, then fine-tune on labelled `train` data; report accuracy before/after on `evaluation`."""
    import torch

    before = _train.accuracy(model, evaluation)
    pruned, layers = prune_channels(model, keep)
    mid = _train.accuracy(pruned, evaluation)

    def ce(logits: torch.Tensor, _x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, y)

    tuned = _train.train(pruned, train, ce, epochs=epochs, lr=lr)
    report = PruneReport(
        keep,
        _train.param_count(model),
        _train.param_count(tuned),
        tuple(layers),
        before,
        mid,
        _train.accuracy(tuned, evaluation),
    )
    return tuned, report


@dataclass(frozen=True)
class SparsityReport:
    """Unstructured sparsity, measured: the dense file does not shrink; only its compressed form does."""

    amount: float
    accuracy_before: float
    accuracy_finetuned: float
    onnx_bytes_dense: int
    onnx_bytes_sparse: int
    xz_bytes_dense: int
    xz_bytes_sparse: int


def unstructured_report(
    model: torch.nn.Module,
    train: Dataset,
    evaluation: Dataset,
    workdir: Path,
    *,
    amount: float = 0.8,
    epochs: int = 8,
) -> tuple[torch.nn.Module, SparsityReport]:
    """Global L1 magnitude pruning of Conv2d/Linear weights, fine-tuned with the masks, then measured."""
    import torch
    from torch.nn.utils import prune as tprune

    from compiler.passes.export import export_onnx

    sparse = copy.deepcopy(model)
    params = [(m, "weight") for m in sparse.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)

    def ce(logits: torch.Tensor, _x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits, y)

    sparse = _train.train(sparse, train, ce, epochs=epochs, lr=5e-4)
    for module, name in params:
        tprune.remove(module, name)  # type: ignore[no-untyped-call]
    dense_path = export_onnx(model, train.inputs, workdir / "dense.onnx")
    sparse_path = export_onnx(sparse, train.inputs, workdir / "sparse.onnx")
    report = SparsityReport(
        amount,
        _train.accuracy(model, evaluation),
        _train.accuracy(sparse, evaluation),
        dense_path.stat().st_size,
        sparse_path.stat().st_size,
        len(lzma.compress(dense_path.read_bytes())),
        len(lzma.compress(sparse_path.read_bytes())),
    )
    return sparse, report


def _pairs(gm: Any) -> list[tuple[str, str | None, str]]:
    modules = dict(gm.named_modules())
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module" and type(modules[node.target]).__name__ in ("Conv2d", "Linear"):
            if type(modules[node.target]).__name__ == "Conv2d" and modules[node.target].groups != 1:
                continue
            found = _follow(node, modules)
            if found:
                out.append((node.target, found[0], found[1]))
    return out


def _follow(node: Any, modules: dict[str, Any]) -> tuple[str | None, str] | None:
    bn = None
    cur = node
    while len(cur.users) == 1:
        (cur,) = cur.users
        kind = type(modules[cur.target]).__name__ if cur.op == "call_module" else cur.target
        if cur.op == "call_module" and kind in ("Conv2d", "Linear"):
            ok = kind == "Linear" or modules[cur.target].groups == 1
            return (bn, cur.target) if ok else None
        if cur.op == "call_module" and kind == "BatchNorm2d":
            bn = cur.target
        elif not (cur.op == "call_module" and kind in _PASS_MODULES) and getattr(
            kind, "__name__", ""
        ) not in (
            "relu",
            "flatten",
            "max_pool2d",
            "avg_pool2d",
        ):
            return None
    return None


def _prune_pair(gm: Any, producer: str, bn: str | None, consumer: str, keep: float) -> None:
    import torch
    from torch import nn

    p, c = gm.get_submodule(producer), gm.get_submodule(consumer)
    w = p.weight.detach()
    n_out = w.shape[0]
    idx = torch.argsort(w.abs().reshape(n_out, -1).sum(dim=1), descending=True)[: max(1, round(n_out * keep))]
    idx = torch.sort(idx).values
    _replace(gm, producer, _narrow_out(p, idx))
    if bn is not None:
        old = gm.get_submodule(bn)
        new_bn = nn.BatchNorm2d(len(idx), eps=old.eps, momentum=old.momentum)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(new_bn, name).data = getattr(old, name).data[idx].clone()
        _replace(gm, bn, new_bn)
    in_features = c.weight.shape[1]
    spatial = in_features // n_out if isinstance(c, nn.Linear) else 1
    cols = (idx[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
    _replace(gm, consumer, _narrow_in(c, cols))


def _narrow_out(m: Any, idx: Any) -> Any:
    from torch import nn

    if isinstance(m, nn.Linear):
        new: Any = nn.Linear(m.in_features, len(idx), bias=m.bias is not None)
    else:
        new = nn.Conv2d(
            m.in_channels, len(idx), m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None
        )
    new.weight.data = m.weight.data[idx].clone()
    if m.bias is not None:
        new.bias.data = m.bias.data[idx].clone()
    return new


def _narrow_in(m: Any, cols: Any) -> Any:
    from torch import nn

    if isinstance(m, nn.Linear):
        new: Any = nn.Linear(len(cols), m.out_features, bias=m.bias is not None)
    else:
        new = nn.Conv2d(
            len(cols), m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None
        )
    new.weight.data = m.weight.data[:, cols].clone()
    if m.bias is not None:
        new.bias.data = m.bias.data.clone()
    return new


def _replace(gm: Any, target: str, module: Any) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)
