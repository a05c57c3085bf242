"""`edgeai compile` on a trained shakespeare model: every candidate's accuracy and size.

Writes the held-out roles' windows as a calibration ``.npz`` (int64 ``X``), compiles the
model for each profile and prints, per candidate, next-character accuracy on the windows
not used for calibration, the file size, and whether it met the profile's budgets.

    .venv/bin/python bench/shakespeare_compile.py results/shakespeare/model.onnx rpi5
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from edgeai.compile import CompileError, CompileOptions, compile_model
from edgeai.profiles import load_profile
from edgeai.task import TaskConfig, load_task


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("profiles", nargs="+")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--windows", type=int, default=5000)
    args = parser.parse_args()
    options = {"hidden": args.hidden, "stride": 8, "val_windows": args.windows}
    _, val = load_task(TaskConfig(name="shakespeare", options=options)).datasets()
    x = np.stack([np.asarray(val[i][0]) for i in range(len(val))]).astype(np.int64)
    y = np.array([int(val[i][1]) for i in range(len(val))])
    work = Path(tempfile.mkdtemp(prefix="shakespeare-compile-"))
    np.savez(work / "heldout.npz", X=x, y=y)
    opts = CompileOptions(calibration_samples=256, eval_samples=len(y) - 256)
    print(f"{len(y)} held-out windows; source {args.model.stat().st_size} bytes")
    for name in args.profiles:
        try:
            m = compile_model(args.model, load_profile(name), work / "heldout.npz",
                              work / name, options=opts)  # fmt: skip
        except CompileError as exc:
            print(f"{name}: {exc}")
            continue
        rows = {c["precision"]: {k: c.get(k) for k in ("score", "size_mb", "fits", "violations")}
                for c in m["candidates"]}  # fmt: skip
        print(f"{name}: chose {m['precision']} ({m['size_bytes']} bytes); {json.dumps(rows)}")


if __name__ == "__main__":
    main()
