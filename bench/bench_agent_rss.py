"""Memory of an inference-only ``edgeai agent serve`` process, next to bare ONNX Runtime.

    python -m bench.bench_agent_rss [--bundle DIR] [--model dp-cnn|dp-cnn-tiny]

Model: by default dp-cnn (the 26k-parameter CNN of the registry, untrained weights:
memory does not depend on them) exported and compiled for x86-64-avx2 with the test
helpers; --bundle serves an existing bundle. The server takes gRPC and REST requests
first, so its steady-state RSS is measured, not its start-up. The reference is a plain
Python process that imports onnxruntime and loads the same model.onnx. Whether torch was
imported is read from the server's memory map (``/proc/PID/maps``: libtorch is mapped
once ``import torch`` ran), so the check needs nothing from inside the process.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import psutil

from bench.bench_serving import request, start_server
from edgeai.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc

REFERENCE = """
import sys, time, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
for _ in range(100):
    s.run(None, {s.get_inputs()[0].name: np.zeros((1, 1, 28, 28), np.float32)})
print("ready", flush=True)
time.sleep(60)
"""


def build(root: Path, name: str) -> Path:
    from edgeai.models import build_model  # noqa: PLC0415
    from edgeai.models.export import export_onnx  # noqa: PLC0415
    from tests.bundles import compile_bundle, train_and_export  # noqa: PLC0415

    if name == "dp-cnn-tiny":
        model, cal = train_and_export(root / "model")
    else:
        _, cal = train_and_export(root / "tiny", steps=1)  # only for its calibration file
        net = build_model(name, (1, 28, 28), 10, seed=0)
        model = export_onnx(net, (1, 28, 28), root / "model.onnx", {})
    return compile_bundle(model, cal, root / "bundle")


def mapped(pid: int, needle: str) -> bool:
    return needle in Path(f"/proc/{pid}/maps").read_text()


def mib(pid: int) -> tuple[float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss / 2**20, info.uss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--model", default="dp-cnn")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build(Path(tmp), args.model)
        proc, grpc_addr, http_port = start_server(bundle, Path(tmp) / "serve.log")
        try:
            x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
            name = json.loads((bundle / "manifest.json").read_text())["model"]["name"]
            with grpc.insecure_channel(grpc_addr) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                for _ in range(200):
                    stub.ModelInfer(request(x, name))
            tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
            body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]})
            url = f"http://127.0.0.1:{http_port}/v2/models/{name}/infer"
            for _ in range(200):
                urllib.request.urlopen(url, body.encode()).read()
            ours = mib(proc.pid)
            torch_in = mapped(proc.pid, "libtorch")
            ort_in = mapped(proc.pid, "onnxruntime")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
        ref_proc = subprocess.Popen(
            [sys.executable, "-c", REFERENCE, str(bundle / "model.onnx")],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert ref_proc.stdout is not None
            ref_proc.stdout.readline()
            time.sleep(0.2)
            ref = mib(ref_proc.pid)
        finally:
            ref_proc.kill()
            ref_proc.wait()
    print(f"model: {args.bundle or args.model} (compiled for x86-64-avx2)")
    print(f"{'':44}{'RSS MiB':>9}{'USS MiB':>9}")
    print(f"{'edgeai agent serve (gRPC+REST, warmed up)':44}{ours[0]:9.1f}{ours[1]:9.1f}")
    print(f"{'python + onnxruntime + session (reference)':44}{ref[0]:9.1f}{ref[1]:9.1f}")
    print(f"ratio serve/reference RSS: {ours[0] / ref[0]:.2f}x; aim RSS <= 150 MiB: "
          f"{'OK' if ours[0] <= 150 else 'MISSED'}")  # fmt: skip
    print(f"torch imported by the server: {torch_in} (onnxruntime mapped: {ort_in}); "
          f"server exit code after SIGTERM: {code}")  # fmt: skip


if __name__ == "__main__":
    main()
