"""The server's view of a softmax head on its root set: loss, accuracy, its own update, dormancy.

A federated run here trains a softmax head `[W (d, k), b (k,)]` on device features; the server
holds a small labelled set (`rootdata.RootSet`) with the same features. `HeadOracle` works on the
flat parameter vector (`robust._flat` order: W row-major, then b) and gives the defences what only
the server's data can: the root loss and accuracy of a candidate model (aggregate validation),
the server's own update from the global model (FLTrust's reference direction), and which
coordinates multiply features that are dormant on clean data (Fine-Pruning's criterion, Liu et
al. RAID 2018: a backdoor hides where clean inputs never activate). The SGD loop mirrors the
device trainer (`agent.federated.trainer`, which the server may not import). Pure numpy.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord

from fleet_server.federated.rootdata import RootSet


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


class HeadOracle:
    def __init__(self, root: RootSet, d: int, k: int) -> None:
        self.root, self.d, self.k = root, d, k
        self._onehot = np.eye(k)[root.y]

    @classmethod
    def for_arrays(cls, root: RootSet | None, arrays: ArrayRecord) -> HeadOracle | None:
        """An oracle when `arrays` is a softmax head over the root set's features, else None."""
        values = [a.numpy() for a in arrays.values()]
        if root is None or len(values) != 2 or values[0].ndim != 2 or values[1].ndim != 1:
            return None
        d, k = values[0].shape
        if values[1].shape != (k,) or root.x.shape[1] != d or int(root.y.max()) >= k:
            return None
        return cls(root, d, k)

    def split(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return v[: self.d * self.k].reshape(self.d, self.k), v[self.d * self.k :]

    def loss_acc(self, v: np.ndarray) -> tuple[float, float]:
        w, b = self.split(v)
        p = _softmax(self.root.x @ w + b)
        loss = float(-np.log(p[np.arange(len(p)), self.root.y] + 1e-12).mean())
        return loss, float(np.mean(np.argmax(p, axis=1) == self.root.y))

    def grad(self, v: np.ndarray) -> np.ndarray:
        """The gradient of the mean root-set cross-entropy at `v` (flat, `v`'s layout)."""
        w, b = self.split(v)
        err = (_softmax(self.root.x @ w + b) - self._onehot) / len(self.root.y)
        return np.concatenate([(self.root.x.T @ err).ravel(), err.sum(axis=0)])

    def update(self, v: np.ndarray, lr: float, epochs: int, batch: int, seed: int) -> np.ndarray:
        """The server's own local training on the root set from `v`: the flat delta."""
        w0, b0 = self.split(v)
        w, b = w0.copy(), b0.copy()
        x, onehot = self.root.x, self._onehot
        rng = np.random.default_rng(seed)
        for _ in range(max(1, epochs)):
            order = rng.permutation(len(x))
            for start in range(0, len(x), max(1, batch)):
                idx = order[start : start + batch]
                grad = (_softmax(x[idx] @ w + b) - onehot[idx]) / len(idx)
                w -= lr * (x[idx].T @ grad)
                b -= lr * grad.sum(axis=0)
        return np.concatenate([(w - w0).ravel(), b - b0])

    def dormant(self, rel: float = 0.05, per_class: bool = False) -> np.ndarray:
        """Mask of the weight coordinates on features that are quiet on the root set (bias
        coordinates are never dormant).

        Feature j is quiet when its mean |activation| is below `rel` x the most active feature's;
        by default all k weights of a quiet feature are masked. `per_class` keeps, among those,
        the weights (j, c) of the classes c that do use feature j: j's mean |activation| on the
        root images of class c is above `rel` x that class's most active feature's. Weight (j, c)
        is where class-c images push through feature j, so a pixel that is quiet overall but
        drawn by one digit stays that digit's to learn, by the mean of the devices holding it."""
        x = np.abs(self.root.x)
        act = x.mean(axis=0)
        quiet = act <= rel * float(act.max() or 1.0)
        table = np.repeat(quiet[:, None], self.k, axis=1)
        if per_class:
            for c in range(self.k):
                rows = x[self.root.y == c]
                if len(rows):
                    act_c = rows.mean(axis=0)
                    table[:, c] &= act_c <= rel * float(act_c.max() or 1.0)
        return np.concatenate([table.ravel(), np.zeros(self.k, dtype=bool)])
