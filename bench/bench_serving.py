"""Serving overhead and batching throughput, measured side by side with plain ONNX Runtime.

    python -m bench.bench_serving [--bundle DIR] [--requests 2000] [--rounds 2]

Model: dp-cnn-tiny trained for 300 steps and compiled for x86-64-avx2 with the test helpers
(tests/bundles.py), unless --bundle names another bundle. The server is a real
``edgeai agent serve`` process on loopback; clients are a plain gRPC stub with edgeai's
KServe v2 protos (raw contents) and a keep-alive ``http.client`` connection (JSON).

1. per-request latency at batch 1: gRPC ModelInfer and REST infer vs in-process
   ``session.run`` (median, p95, and the median overhead in ms; aim <= 0.3 ms);
2. throughput at concurrency 32 (batch-1 requests, micro-batched by the server) vs raw
   ORT running batches of 32 in a loop (rows/s and the ratio; aim >= 0.8x), next to the
   ceiling of the gRPC stack itself (ServerLive, no model, same concurrency).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgeai.profiles import load_profile
from edgeai.serving._proto import grpc_predict_v2_pb2 as pb
from edgeai.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from edgeai.serving.model import load_served

LISTENING = re.compile(r"grpc=([\d.]+:\d+) http=http://([\d.]+):(\d+)")


def build_bundle(root: Path) -> Path:
    from tests.bundles import compile_bundle, train_and_export  # noqa: PLC0415

    model, cal = train_and_export(root / "model")
    return compile_bundle(model, cal, root / "bundle")


def start_server(bundle: Path, log: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str, int]:
    exe = Path(sys.executable).with_name("edgeai")
    cmd = [str(exe), "agent", "serve", str(bundle), "--grpc-port", "0", "--http-port", "0", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text())
        if match:
            return proc, match.group(1), int(match.group(3))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not start:\n{log.read_text()}")


def timed(fn: Any, n: int) -> np.ndarray:
    for _ in range(min(200, n)):  # warm up
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


def request(x: np.ndarray, name: str) -> Any:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    return pb.ModelInferRequest(model_name=name, inputs=[tensor], raw_input_contents=[x.tobytes()])


async def concurrent_grpc(
    addr: str, req: Any, concurrency: int, seconds: float, method: str = "ModelInfer"
) -> float:
    async with grpc.aio.insecure_channel(addr) as channel:
        call = getattr(pb_grpc.GRPCInferenceServiceStub(channel), method)
        for _ in range(50):
            await call(req)
        done = 0
        stop_at = time.perf_counter() + seconds

        async def client() -> None:
            nonlocal done
            while time.perf_counter() < stop_at:
                await call(req)
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return done / (time.perf_counter() - start)


def ort_throughput(session: Any, x: np.ndarray, seconds: float) -> float:
    for _ in range(20):
        session.run(None, {"input": x})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"input": x})
        done += len(x)
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build_bundle(Path(tmp))
        served = load_served(bundle, load_profile("x86-64-avx2"))
        proc, grpc_addr, http_port = start_server(bundle, Path(tmp) / "serve.log")
        try:
            run(args, served, grpc_addr, http_port)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)


def run(args: argparse.Namespace, served: Any, grpc_addr: str, http_port: int) -> None:
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    session = served.session
    req = request(x, served.name)
    body = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 1, 28, 28],
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()
    channel = grpc.insecure_channel(grpc_addr)
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    conn = http.client.HTTPConnection("127.0.0.1", http_port)
    path = f"/v2/models/{served.name}/infer"
    headers = {"Content-Type": "application/json"}

    def rest() -> None:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise SystemExit(f"REST infer failed: {resp.status}")

    calls = {
        "ORT session.run (in-process)": lambda: session.run(None, {"input": x}),
        "gRPC ModelInfer (raw contents)": lambda: stub.ModelInfer(req),
        "gRPC ServerLive (stack floor)": lambda: stub.ServerLive(pb.ServerLiveRequest()),
        "REST infer (JSON, keep-alive)": rest,
    }
    print(
        f"model {served.name} {served.version} on {served.provider}; batch 1, "
        f"{args.requests} requests x {args.rounds} rounds (interleaved)"
    )
    samples: dict[str, list[np.ndarray]] = {k: [] for k in calls}
    for _ in range(args.rounds):
        for name, fn in calls.items():
            samples[name].append(timed(fn, args.requests))
    base = float(np.median(np.concatenate(samples["ORT session.run (in-process)"])))
    print(f"{'':34}{'median ms':>10}{'p95 ms':>9}{'overhead ms':>13}")
    for name, runs in samples.items():
        ms = np.concatenate(runs)
        med, p95 = float(np.median(ms)), float(np.percentile(ms, 95))
        over = "" if name.startswith("ORT") or "floor" in name else f"{med - base:+.3f}"
        print(f"{name:34}{med:10.3f}{p95:9.3f}{over:>13}")
    channel.close()
    conn.close()

    c = args.concurrency
    xb = np.repeat(x, c, axis=0)
    live = pb.ServerLiveRequest()
    for r in range(args.rounds):
        ours = asyncio.run(concurrent_grpc(grpc_addr, req, c, args.seconds))
        ref = ort_throughput(session, xb, args.seconds)
        floor = asyncio.run(concurrent_grpc(grpc_addr, live, c, args.seconds, "ServerLive"))
        print(
            f"round {r + 1}: concurrency {c} gRPC infer (micro-batched) {ours:7.0f} rows/s | "
            f"ORT batch {c} {ref:7.0f} rows/s | ratio {ours / ref:.3f}x | "
            f"gRPC ServerLive {floor:7.0f} req/s (infer/floor {ours / floor:.2f}x)"
        )


if __name__ == "__main__":
    main()
