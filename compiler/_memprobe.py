"""Child process for peak-memory measurement: `python -m compiler._memprobe ARTIFACT RUNTIME DELEGATE`.

Prints the resident-memory high-water mark above the post-import baseline, in bytes, after loading
the artifact and running one batch-1 inference on zeros. A fresh process per artifact keeps earlier
sessions and allocator reuse out of the number.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


def _zeros(path: Path, runtime: str) -> dict[str, np.ndarray]:
    if runtime == "onnxruntime":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
        shapes = {i.name: [d if isinstance(d, int) else 1 for d in i.shape] for i in sess.get_inputs()}
        out = {i.name: np.zeros(shapes[i.name], types.get(i.type, np.float32)) for i in sess.get_inputs()}
        del sess
        return out
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(str(path)).get_input_details()
    return {d["name"]: np.zeros(d["shape"], np.float32) for d in details}


def main() -> None:
    path, runtime, delegate = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    from compiler.measure import open_runtime

    sample = _zeros(path, runtime)
    Path("/proc/self/clear_refs").write_text("5")
    base = _kb("VmRSS")
    runner = open_runtime(path, runtime, 1, delegate)
    runner.run(sample)
    print(max(0, (_kb("VmHWM") - base) * 1024))


if __name__ == "__main__":
    main()
