"""The demo's model: the digits CNN trained on scikit-learn's bundled digits (offline, ~3 s).

Writes what a data scientist hands the compiler: weights for `tests.fixtures.digits:make_digits_cnn`,
calibration inputs, a labelled evaluation set, and a small golden set for the release gate.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def prepare(work: Path) -> dict[str, Path]:
    import torch

    from tests.fixtures.digits import load_digits_data, train_digits_cnn

    work.mkdir(parents=True, exist_ok=True)
    data = load_digits_data()
    model = train_digits_cnn(data)
    paths = {
        "weights": work / "digits.pt",
        "calib": work / "calib.npz",
        "eval": work / "eval.npz",
        "golden": work / "golden.npz",
        "shifted": work / "shifted.npy",
        "normal": work / "normal.npy",
    }
    torch.save(model.state_dict(), paths["weights"])
    np.savez(paths["calib"], x=data.x_train[:256])
    np.savez(paths["eval"], x=data.x_test, y=data.y_test)
    np.savez(paths["golden"], **{"input:input": data.x_test[:64]}, labels=data.y_test[:64])
    np.save(paths["normal"], data.x_test[64:96])
    # A sensor that went bright: every pixel +0.35 (clipped), what a dirty lens or new lighting does.
    # 200 rows per request: the agent's API takes batches of up to 256.
    np.save(paths["shifted"], np.clip(data.x_test[:200] + 0.35, 0, 1).astype(np.float32))
    return paths


def prepare_head(work: Path, devices: list[str]) -> dict[str, Path]:
    """The federated model: a 64x10 softmax head on the digit pixels, trained centrally on only
    40 samples (the registry's v1), plus one labelled non-IID shard per device: the samples each
    device's app confirms through `edgeloop-agent feedback`."""
    from tests.fixtures.heads import flat_digits, write_head_model
    from tests.helpers.fl_fleet import dirichlet_split

    paths = write_head_model(work, n_train=40)
    x_tr, y_tr, x_te, _ = flat_digits()
    for device, rows in zip(devices, dirichlet_split(y_tr[40:], len(devices), 0.5, seed=3), strict=True):
        paths[f"shard:{device}"] = work / f"feedback-{device}.npz"
        np.savez(paths[f"shard:{device}"], x=x_tr[40:][rows], y=y_tr[40:][rows])
    paths["head_inputs"] = work / "head-inputs.npy"
    np.save(paths["head_inputs"], x_te[:16])
    return paths
