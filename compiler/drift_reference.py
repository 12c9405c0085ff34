"""The drift reference profile that ships beside every compiled artifact (`drift_reference.json`).

Owns the choice of what the on-device monitor watches for a given model: the flattened float input
for a single-input classifier (one channel set per input feature up to 64 features, named `x[i]`;
wider inputs such as images are reduced by the profile's own PCA view),
the output embedding for an embedding model, plus the fp32 model's class probabilities and errors on
the evaluation set. The statistics themselves live in `agent.drift.reference` (numpy only, the same
code the device runs). Returns None, with a reason, when a model has no monitorable float view.
"""

from __future__ import annotations

import numpy as np

from agent.drift.reference import DEFAULT_BUDGET_PER_10K, build_reference
from compiler.data import Dataset


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def make_reference(
    evaluation: Dataset,
    fp32_outputs: np.ndarray,
    *,
    task: str,
    model_name: str,
    budget_per_10k: float = DEFAULT_BUDGET_PER_10K,
) -> tuple[bytes | None, str]:
    """Return (profile bytes, what is monitored) or (None, why not).

    `budget_per_10k` is the false-alarm budget the device's thresholds are calibrated to
    (expected false drift episodes per 10,000 monitored samples).
    """
    outputs = np.asarray(fp32_outputs, dtype=np.float64).reshape(len(fp32_outputs), -1)
    if len(outputs) < 100:
        return None, f"only {len(outputs)} evaluation samples; a drift reference needs >= 100"
    if task == "embedding":
        profile = build_reference(
            outputs, budget_per_10k=budget_per_10k, meta={"model": model_name, "view": "output embedding"}
        )
        view = "output embedding" + (" (PCA view)" if outputs.shape[1] > 64 else "")
        return profile.to_bytes(), view
    arrays = list(evaluation.inputs.values())
    if len(arrays) != 1 or arrays[0].dtype.kind != "f":
        return None, "multi-input or non-float model: no input view to monitor"
    inputs = arrays[0].reshape(len(arrays[0]), -1).astype(np.float64)
    probs = _softmax(outputs)
    errors = None
    if evaluation.labels is not None:
        errors = (probs.argmax(axis=1) != evaluation.labels).astype(np.float64)
    view = "flattened input" if inputs.shape[1] <= 64 else "flattened input (PCA view)"
    profile = build_reference(
        inputs,
        outputs=probs,
        errors=errors,
        budget_per_10k=budget_per_10k,
        meta={"model": model_name, "view": view},
    )
    return profile.to_bytes(), f"{view} + output distribution"
