"""Export a trained shakespeare model to ONNX, quantize it (dynamic int8), compare side by side.

The int8 model is ORT's dynamic quantization (int8 weights, activations quantized at run
time) after ORT's pre-processing. Prints, on held-out roles: torch fp32 vs ONNX fp32 (max
abs diff), next-character accuracy of fp32 and int8 ONNX, the drop in points, and the file
sizes and their ratio.

    .venv/bin/python bench/shakespeare_int8.py results/shakespeare --windows 20000
"""

from __future__ import annotations

import argparse
import json
import tomllib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgeai.task.builtin import ShakespeareTask


def accuracy(session: ort.InferenceSession, ids: np.ndarray, target: np.ndarray) -> float:
    name = session.get_inputs()[0].name
    hits = 0
    for lo in range(0, len(ids), 2000):
        logits = session.run(None, {name: ids[lo : lo + 2000]})[0]
        hits += int((logits.argmax(1) == target[lo : lo + 2000]).sum())
    return hits / len(ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a bench/fedavg_task.py output folder")
    ap.add_argument("--experiment", type=Path, default=Path("simulations/shakespeare.toml"))
    ap.add_argument("--windows", type=int, default=20_000)
    args = ap.parse_args()
    options = tomllib.loads(args.experiment.read_text())["task"].get("options", {})
    options["val_windows"] = args.windows
    task = ShakespeareTask(**options)
    model = task.build_model().eval()
    model.load_state_dict(torch.load(args.run / "model.pt", weights_only=True))
    fp32, int8 = args.run / "model.onnx", args.run / "model.int8.onnx"
    program = torch.onnx.export(
        model,
        (task.example_input(),),
        dynamo=True,
        input_names=["ids"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    assert program is not None
    program.save(str(fp32))
    proto = onnx.load(str(fp32))
    for key, value in task.onnx_metadata().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(fp32))
    # The exporter reorders the LSTM's gates with Slice/Concat on its weights, which the
    # exporter's optimizer leaves unfolded (too large); without folding them (ORT's own
    # pre-processing does) quantize_dynamic finds no LSTM weight initializers and leaves
    # the LSTM in fp32 (size ratio ~0.97).
    folded = args.run / "model.pre.onnx"
    quant_pre_process(str(fp32), str(folded), skip_symbolic_shape=True)
    quantize_dynamic(str(folded), str(int8), weight_type=QuantType.QInt8)
    plain = args.run / "model.int8-unfolded.onnx"
    quantize_dynamic(str(fp32), str(plain), weight_type=QuantType.QInt8)
    ops = sorted({n.op_type for n in onnx.load(str(int8)).graph.node})

    _, val = task.datasets()
    ids, target = (t.numpy() for t in val.arrays())
    cpu = ["CPUExecutionProvider"]
    s32 = ort.InferenceSession(str(fp32), providers=cpu)
    s8 = ort.InferenceSession(str(int8), providers=cpu)
    with torch.no_grad():
        want = model(torch.from_numpy(ids[:500])).numpy()
    diff = float(np.abs(s32.run(None, {"ids": ids[:500]})[0] - want).max())
    a32, a8 = accuracy(s32, ids, target), accuracy(s8, ids, target)
    size32, size8 = fp32.stat().st_size, int8.stat().st_size
    print(
        json.dumps(
            {
                "windows": len(ids),
                "torch_vs_onnx_max_abs_diff": diff,
                "accuracy_fp32": round(a32, 4),
                "accuracy_int8": round(a8, 4),
                "drop_points": round(100 * (a32 - a8), 2),
                "bytes_fp32": size32,
                "bytes_int8": size8,
                "size_ratio": round(size8 / size32, 3),
                "size_ratio_without_folding": round(plain.stat().st_size / size32, 3),
                "int8_ops": ops,
            }
        )
    )


if __name__ == "__main__":
    main()
