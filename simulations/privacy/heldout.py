"""Score a run's exported model on the held-out images its experiment never trained or tuned on.

Usage: ``python simulations/privacy/heldout.py RUN_DIR [RUN_DIR ...]`` where each RUN_DIR is
an ``edgeai simulate --out`` folder whose experiment's mnist task sets ``holdout`` (the last
N images of the data set, kept out of train and validation). Runs ``RUN_DIR/model.onnx``
with ONNX Runtime on raw [0, 1] pixels, as a device would, and writes
``RUN_DIR/heldout.json`` (accuracy, count, the images' file indices).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeai.data.datasets import load_holdout


def score(run: Path) -> dict[str, object]:
    """Held-out accuracy of ``run/model.onnx``; raises SystemExit if the run held nothing out."""
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    options = (summary.get("config", {}).get("task") or {}).get("options") or {}
    holdout = int(options.get("holdout", 0))
    if holdout <= 0:
        raise SystemExit(f"{run}: the experiment holds no images out (task option holdout)")
    dataset = str(options.get("dataset", "mnist"))
    data = load_holdout(dataset, holdout)
    session = ort.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = np.concatenate(
        [session.run(None, {"input": data.x[i : i + 500]})[0] for i in range(0, len(data), 500)]
    )
    correct = int((logits.argmax(1) == data.y).sum())
    total = len(data)
    result: dict[str, object] = {
        "heldout_accuracy": correct / total,
        "correct": correct,
        "count": total,
        # A 95 % Wilson-free normal interval: the count is what limits the claim.
        "stderr": float(np.sqrt(correct / total * (1 - correct / total) / total)),
        "dataset": dataset,
        "indices": f"last {holdout} of the data set (file order)",
        "validation_accuracy": summary.get("accuracy"),
        "epsilon": summary.get("epsilon"),
    }
    (run / "heldout.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: list[str]) -> int:
    """Score every run directory given."""
    if not argv:
        print(__doc__)
        return 2
    for arg in argv:
        r = score(Path(arg))
        print(
            f"{arg}: held-out accuracy {r['heldout_accuracy']:.2%} ({r['correct']}/{r['count']}, "
            f"± {r['stderr']:.2%} s.e.), validation {r['validation_accuracy']}, ε {r['epsilon']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
