"""Torch fine-tuning of the softmax head, for devices that have torch (`[federated] trainer = "torch"`).

Same contract and semantics as `agent.federated.trainer.train`: the head [W (d, k), b (k,)], minibatch
SGD on mean cross-entropy, the same epochs / batch size / learning rate / FedProx `proximal_mu`, and
the same minibatch order (drawn from a numpy generator seeded with the task's seed), so a device that
switches trainers joins the same federated round with an equivalent update. It returns the new arrays
in their incoming dtypes and the last epoch's mean cross-entropy (without the proximal term).

What differs: the arithmetic runs in float32 (the numpy trainer uses float64) because that is what
a GPU does fast, and it runs on CUDA when `torch.cuda.is_available()` (Jetson), else on the CPU with
`threads` intra-op threads when given. CUDA was not available where this was written and tested:
only the CPU path has been run.

torch comes from the agent's optional `train` extra and is imported only inside `train`, so importing
`agent.federated` (or choosing the numpy trainer) never loads it. This module does no I/O.
"""

from __future__ import annotations

import importlib.util

import numpy as np

from agent.errors import ConfigError, InvalidInputError
from agent.federated.trainer import TrainParams, _check

MISSING = "trainer = 'torch' needs the agent's train extra: pip install edgeloop[agent,train]"


def require() -> None:
    """Check that torch is installed, without importing it (startup validation).

    Raises:
        ConfigError: torch is not installed.
    """
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ConfigError(MISSING)


def train(
    weights: list[np.ndarray], x: np.ndarray, y: np.ndarray, params: TrainParams, *, threads: int = 0
) -> tuple[list[np.ndarray], float]:
    """Minibatch SGD on cross-entropy with torch; returns the new [W, b] (same dtypes) and the loss.

    Args:
        weights: the head, [W (d, k), b (k,)].
        x: features, (n, d).
        y: integer labels in [0, k), (n,).
        params: the task's hyperparameters (as for the numpy trainer).
        threads: `torch.set_num_threads` for the CPU path (0 leaves torch's default).

    Raises:
        InvalidInputError: the arrays do not form a softmax head for these features and labels.
        ConfigError: torch is not installed.
    """
    w0, b0 = _check(weights, x)
    k = w0.shape[1]
    if y.shape != (len(x),) or (len(y) and (y.min() < 0 or y.max() >= k)):
        raise InvalidInputError(f"labels {y.shape} must be {len(x)} integers in [0, {k})")
    if params.batch_size < 1:
        raise InvalidInputError(f"batch size must be >= 1, got {params.batch_size}")
    try:
        import torch
    except ImportError as err:
        raise ConfigError(MISSING) from err
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    xt = torch.as_tensor(np.asarray(x, np.float32), device=device)
    yt = torch.as_tensor(np.asarray(y, np.int64), device=device)
    start = [torch.as_tensor(np.asarray(a, np.float32), device=device) for a in (w0, b0)]
    w, b = (s.clone().requires_grad_(True) for s in start)
    opt = torch.optim.SGD([w, b], lr=params.lr)
    rng = np.random.default_rng(params.seed)
    loss = 0.0
    for _ in range(max(1, params.epochs)):
        order = torch.as_tensor(rng.permutation(len(x)), device=device)
        total = torch.zeros((), device=device)
        for first in range(0, len(x), params.batch_size):
            idx = order[first : first + params.batch_size]
            ce = torch.nn.functional.cross_entropy(xt[idx] @ w + b, yt[idx], reduction="sum")
            objective = ce / len(idx)
            if params.proximal_mu:  # FedProx: mu/2 ||theta - theta_0||^2, gradient mu (theta - theta_0)
                prox = (w - start[0]).square().sum() + (b - start[1]).square().sum()
                objective = objective + params.proximal_mu / 2 * prox
            opt.zero_grad(set_to_none=True)
            torch.autograd.backward(objective)  # typed, unlike Tensor.backward
            opt.step()
            total += ce.detach()
        loss = float(total) / max(1, len(x))
    out = [t.detach().cpu().numpy().astype(a.dtype) for t, a in ((w, w0), (b, b0))]
    return out, loss
