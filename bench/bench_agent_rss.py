"""Memory of an inference-only agent — ``agent serve`` and the full ``agent run`` daemon.

    python -m bench.bench_agent_rss [--bundle DIR] [--model fedavg-cnn|dp-cnn|dp-cnn-tiny]

Model: by default fedavg-cnn (the FedAvg paper's CNN, 1.66M parameters, untrained weights:
memory does not depend on them) exported and compiled for x86-64-avx2 with the test
helpers; --bundle serves an existing bundle. ``agent run`` runs with everything an
inference-only device runs: serving, the TUF updater polling a real repository, zeroconf,
telemetry to a real Mosquitto through the outbox, and /metrics (federation off: no
``train`` extra). The server takes gRPC and REST requests
first, so its steady-state RSS is measured, not its start-up. The reference is a plain
Python process that imports onnxruntime and loads the same model.onnx. Whether torch was
imported is read from the server's memory map (``/proc/PID/maps``: libtorch is mapped
once ``import torch`` ran), so the check needs nothing from inside the process.
"""

from __future__ import annotations

import argparse
import json
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
from edgeai.plumbing.processes import terminate, wait_until
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


def agent_run(
    bundle: Path, tmp: Path, name: str, x: np.ndarray
) -> tuple[tuple[float, float], bool]:
    """Start ``edgeai agent run`` with every inference-only part; its warmed-up RSS/USS."""
    from edgeai.artifacts import ArtifactRepository, serve  # noqa: PLC0415
    from edgeai.plumbing.processes import free_port  # noqa: PLC0415
    from tests.mosquitto import Mosquitto  # noqa: PLC0415

    repo = ArtifactRepository.create(tmp / "repo")
    http = free_port()
    with Mosquitto(tmp / "broker") as broker, serve(repo.path) as server:
        config = tmp / "agent.toml"
        config.write_text(
            f'node = "rss"\nprofile = "x86-64-avx2"\nstate_dir = "{tmp / "state"}"\n'
            f'bundle = "{bundle}"\nmetrics_interval_s = 1\n[federation]\nenabled = false\n'
            f'[updates]\nrepository_url = "{server.url}"\ntrusted_root = "{repo.root_path}"\n'
            f"interval_s = 1\n[serving]\ngrpc_port = 0\nhttp_port = {http}\n"
            f'[telemetry]\nbroker_url = "{broker.url}"\nfleet = "bench"\n'
            '[discovery]\ninterfaces = ["127.0.0.1"]\nip_version = "v4"\n',
            encoding="utf-8",
        )
        exe = Path(sys.executable).with_name("edgeai")
        log = (tmp / "agent.log").open("wb")
        proc = subprocess.Popen(
            [str(exe), "agent", "run", "-c", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        try:
            tensor = {"name": "input", "datatype": "FP32", "shape": list(x.shape)}
            body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
            url = f"http://127.0.0.1:{http}/v2/models/{name}/infer"

            def answers() -> bool:
                try:
                    urllib.request.urlopen(url, body).read()
                except OSError:
                    return False
                return True

            def alive() -> None:
                if proc.poll() is not None:
                    raise RuntimeError(f"edgeai agent run exited with {proc.returncode}")

            wait_until(answers, 60, f"{url} to answer", poll_s=0.1, check=alive)
            for _ in range(400):
                urllib.request.urlopen(url, body).read()
            time.sleep(3)  # a few update checks and metrics rounds
            return mib(proc.pid), mapped(proc.pid, "libtorch")
        finally:
            terminate(proc, 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--model", default="fedavg-cnn")
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
            code = terminate(proc, 30)
        daemon, daemon_torch = agent_run(bundle, Path(tmp), name, x)
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
    print(f"{'edgeai agent run (+updates, mDNS, MQTT)':44}{daemon[0]:9.1f}{daemon[1]:9.1f}")
    print(
        f"ratio serve/reference RSS: {ours[0] / ref[0]:.2f}x, run/reference "
        f"{daemon[0] / ref[0]:.2f}x; aim RSS <= 150 MB ({150e6 / 2**20:.0f} MiB): "
        f"{'OK' if max(ours[0], daemon[0]) * 2**20 <= 150e6 else 'MISSED'}"
    )
    print(f"torch imported by agent run: {daemon_torch}")
    print(
        f"torch imported by the server: {torch_in} (onnxruntime mapped: {ort_in}); "
        f"server exit code after SIGTERM: {code}"
    )


if __name__ == "__main__":
    main()
