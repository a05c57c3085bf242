"""The issue's numbers for one model on this x86 host, measured side by side.

    python bench/bench_bundle.py /tmp/cnn/model.onnx [--profile x86-64-avx2]

Compiles the model for the profile (calibrating on MNIST validation samples), then times
the bundle, ORT fp32 and torch eager fp32 in interleaved rounds and prints medians:
ORT fp32 / torch eager at batch 1 (target >= 2x), int8 / ORT fp32 at batch 64 (>= 1.8x),
size ratio (<= 0.3x) and accuracy drop on the whole validation split (<= 0.5 points).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console

from edgeai.compile import compile_model
from edgeai.data import load_dataset
from edgeai.profiles import load_profile
from edgeai.runtime.bench import bench_bundle, render
from edgeai.runtime.measure import cpu_session, predict


def main() -> None:
    """Compile, time and print the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--profile", default="x86-64-avx2")
    parser.add_argument("--repeats", type=int, default=500)
    args = parser.parse_args()
    console = Console()
    val = load_dataset("mnist").validation
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp) / "cal.npz"
        np.savez(calib, X=np.round(val.x[:, 0] * 255).astype(np.uint8), y=val.y)
        bundle = Path(tmp) / "bundle"
        manifest = compile_model(args.model, load_profile(args.profile), calib, bundle)
        report = bench_bundle(bundle, args.model, args.repeats)
        render(report, console)
        acc = {
            name: float((predict(cpu_session(str(path)), val.x).argmax(1) == val.y).mean())
            for name, path in (("fp32", args.model), ("bundle", bundle / "model.onnx"))
        }
        size = (bundle / "model.onnx").stat().st_size / args.model.stat().st_size
    b1 = report.ratio("ORT fp32", "torch eager fp32", "p50_ms_batch1")
    b64 = report.ratio(next(iter(report.results)), "ORT fp32", "throughput_batch64")
    drop = (acc["fp32"] - acc["bundle"]) * 100
    console.print(f"precision chosen: {manifest['precision']} ({manifest['chosen']['why']})")
    for label, value, target, ok in (
        ("ORT fp32 / torch eager, batch 1", b1, ">= 2x", b1 is not None and b1 >= 2),
        ("bundle / ORT fp32, batch 64", b64, ">= 1.8x", b64 is not None and b64 >= 1.8),
        ("size bundle / fp32", size, "<= 0.3x", size <= 0.3),
        ("accuracy drop (points)", drop, "<= 0.5", drop <= 0.5),
    ):
        shown = "n/a" if value is None else f"{value:.3f}"
        console.print(f"{label}: {shown} (target {target}) {'OK' if ok else 'MISSED'}")
    console.print(f"validation accuracy: fp32 {acc['fp32']:.4f}, bundle {acc['bundle']:.4f}")


if __name__ == "__main__":
    main()
