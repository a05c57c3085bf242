"""Serving overhead and batching throughput, measured side by side with plain ONNX Runtime.

    python -m bench.bench_serving [--model fedavg-cnn|dp-cnn|dp-cnn-tiny] [--bundle DIR]
        [--requests 2000] [--rounds 3] [--seconds 4] [--concurrency 32] [--pin | --no-pin]

Model: by default the FedAvg CNN (``fedavg-cnn``, 1.66M parameters, untrained weights:
speed does not depend on them) exported and compiled for x86-64-avx2 (the compiler picks
the precision; the output names it); ``--model`` picks a smaller one of the registry
(``dp-cnn-tiny`` is trained for 300 steps with the test helpers), ``--bundle`` serves an
existing bundle. The server is a real ``edgeai agent serve`` process on loopback.

Fairness: the load generator is a separate process (a plain gRPC stub with edgeai's
KServe v2 protos and raw contents, a keep-alive ``http.client`` connection with JSON, and a
``grpc.aio`` client for concurrency), never the server's process. With ``--pin`` (the
default when the host has 2+ CPUs) the server gets CPU 0 and the load generator the other
CPUs (``os.sched_setaffinity`` on every thread), so they do not steal each other's core;
the raw ONNX Runtime reference runs in its own process pinned like the server, with the
same session settings, so both sides get the same CPU.

1. per-request latency at batch 1: gRPC ModelInfer and REST infer vs ``session.run``
   (median, p95 and median overhead in ms; aim <= 0.3 ms), next to gRPC ServerLive (an
   RPC that does nothing: the floor of the gRPC stack on this host);
2. throughput at concurrency 32 of batch-1 requests, micro-batched by the server (rows/s),
   the merged batch sizes the server ran (from its ``/metrics`` histogram), raw ORT at
   batch 32 and at the average merged batch size, and ServerLive at the same concurrency.
   Rounds are interleaved; medians over rounds are printed last.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgeai.plumbing.processes import terminate, wait_until
from edgeai.serving._proto import grpc_predict_v2_pb2 as pb
from edgeai.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc

LISTENING = re.compile(r"grpc=([\d.]+:\d+) http=http://([\d.]+):(\d+)")
BUCKET = re.compile(r'^edgeai_serving_batch_size_bucket\{le="([^"]+)"\} (\S+)$', re.MULTILINE)
TOTALS = re.compile(r"^edgeai_serving_batch_size_(sum|count) (\S+)$", re.MULTILINE)
SHAPE = (1, 1, 28, 28)


def build_bundle(root: Path, model: str = "fedavg-cnn") -> Path:
    """Export ``model`` (registry name) and compile it for x86-64-avx2 with test sample counts."""
    from tests.bundles import compile_bundle, train_and_export  # noqa: PLC0415

    if model == "dp-cnn-tiny":
        onnx_path, cal = train_and_export(root / "model")
        return compile_bundle(onnx_path, cal, root / "bundle")
    from edgeai.data import load_dataset  # noqa: PLC0415
    from edgeai.models import build_model  # noqa: PLC0415
    from edgeai.models.export import export_onnx  # noqa: PLC0415

    root.mkdir(parents=True, exist_ok=True)
    net = build_model(model, SHAPE[1:], 10, seed=0)
    onnx_path = export_onnx(net, SHAPE[1:], root / "model.onnx", {})
    val = load_dataset("mnist").validation
    cal = root / "cal.npz"
    np.savez(cal, X=np.round(val.x[:600, 0] * 255).astype(np.uint8), y=val.y[:600])
    return compile_bundle(onnx_path, cal, root / "bundle")


def pin_all_threads(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` (affinity is per thread; new threads inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus)


def start_server(
    bundle: Path, log: Path, *extra: str, cpus: set[int] | None = None
) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start ``edgeai agent serve`` on free ports; return it, the gRPC address, the HTTP port."""
    exe = Path(sys.executable).with_name("edgeai")
    cmd = [str(exe), "agent", "serve", str(bundle), "--grpc-port", "0", "--http-port", "0", *extra]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    if cpus:
        pin_all_threads(proc.pid, cpus)  # before the interpreter starts any thread

    def alive() -> None:
        if proc.poll() is not None:
            raise ChildProcessError(f"exited with {proc.returncode}")

    try:
        match = wait_until(lambda: LISTENING.search(log.read_text()), 60, "serve", check=alive)
    except (TimeoutError, ChildProcessError) as exc:
        proc.kill()
        raise SystemExit(f"server did not start ({exc}):\n{log.read_text()}") from exc
    if cpus:  # again: threads started meanwhile inherited it, but make sure
        pin_all_threads(proc.pid, cpus)
    return proc, match.group(1), int(match.group(3))


def request(x: np.ndarray, name: str) -> Any:
    """A ``ModelInferRequest`` for ``x`` with raw contents."""
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
    return pb.ModelInferRequest(model_name=name, inputs=[tensor], raw_input_contents=[x.tobytes()])


def timed(fn: Any, n: int) -> np.ndarray:
    """Milliseconds of ``n`` sequential calls after a warm-up."""
    for _ in range(min(200, n)):
        fn()
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out * 1e3


# --- run in the load-generator process -------------------------------------------------


def _pin_self(cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(0, cpus)


def _x(rows: int = 1) -> np.ndarray:
    return np.random.default_rng(0).random((rows, *SHAPE[1:]), dtype=np.float32)


def client_latency(grpc_addr: str, http_port: int, name: str, n: int) -> dict[str, np.ndarray]:
    """Batch-1 latency of gRPC infer, gRPC ServerLive and REST infer, sequentially."""
    x = _x()
    req, live = request(x, name), pb.ServerLiveRequest()
    tensor = {"name": "input", "datatype": "FP32", "shape": list(SHAPE)}
    body = json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()
    path, headers = f"/v2/models/{name}/infer", {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", http_port)

    def rest() -> None:
        conn.request("POST", path, body, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status != 200:
            raise RuntimeError(f"REST infer failed: {resp.status}")

    with grpc.insecure_channel(grpc_addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        out = {
            "grpc": timed(lambda: stub.ModelInfer(req), n),
            "live": timed(lambda: stub.ServerLive(live), n),
            "rest": timed(rest, n),
        }
    conn.close()
    return out


async def _concurrent(addr: str, name: str, method: str, concurrency: int, seconds: float) -> float:
    req = request(_x(), name) if method == "ModelInfer" else pb.ServerLiveRequest()
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


def client_throughput(addr: str, name: str, method: str, concurrency: int, seconds: float) -> float:
    """Requests per second of ``concurrency`` concurrent callers of ``method`` (grpc.aio)."""
    try:
        import uvloop  # noqa: PLC0415  (optional: a cheaper client leaves more CPU to measure)

        return uvloop.run(_concurrent(addr, name, method, concurrency, seconds))
    except ImportError:
        return asyncio.run(_concurrent(addr, name, method, concurrency, seconds))


# --- run in the ORT reference process (pinned like the server) -------------------------

_SESSION: Any = None


def _load_reference(bundle: Path, cpus: set[int] | None) -> None:
    global _SESSION  # noqa: PLW0603  (one session per reference process)
    _pin_self(cpus)
    from edgeai.profiles import load_profile  # noqa: PLC0415
    from edgeai.serving.model import load_served  # noqa: PLC0415

    _SESSION = load_served(bundle, load_profile("x86-64-avx2")).session  # as the server does


def ort_latency(n: int) -> np.ndarray:
    """Batch-1 ``session.run`` milliseconds."""
    x = _x()
    return timed(lambda: _SESSION.run(None, {"input": x}), n)


def ort_throughput(rows: int, seconds: float) -> float:
    """Rows per second of ``session.run`` on batches of ``rows`` in a loop."""
    x = _x(rows)
    for _ in range(20):
        _SESSION.run(None, {"input": x})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _SESSION.run(None, {"input": x})
        done += rows
    return done / (time.perf_counter() - start)


# --- the driver ------------------------------------------------------------------------


def batch_histogram(http_port: int) -> tuple[dict[float, float], float, float]:
    """Cumulative rows-per-run buckets, sum and count from the server's ``/metrics``."""
    conn = http.client.HTTPConnection("127.0.0.1", http_port)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    buckets = {float(le): float(v) for le, v in BUCKET.findall(text)}
    totals = {k: float(v) for k, v in TOTALS.findall(text)}
    return buckets, totals["sum"], totals["count"]


def merged_sizes(before: Any, after: Any) -> tuple[float, str]:
    """Average rows per run between two scrapes, and the share of runs per size bucket."""
    runs = after[2] - before[2]
    avg = (after[1] - before[1]) / runs if runs else 0.0
    parts, below = [], 0.0
    for le in sorted(after[0]):
        cum = after[0][le] - before[0].get(le, 0.0)
        if cum - below > 0:
            label = "+Inf" if le == float("inf") else f"<={le:g}"
            parts.append(f"{label}: {100 * (cum - below) / runs:.0f}%")
        below = cum
    return avg, ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fedavg-cnn", help="fedavg-cnn, dp-cnn, dp-cnn-tiny")
    parser.add_argument("--bundle", type=Path, help="serve this bundle instead of building one")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--server-arg", action="append", default=[], help="for agent serve")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    pin = len(cpus) >= 2 if args.pin is None else args.pin
    server_cpus = {cpus[0]} if pin else None
    client_cpus = set(cpus[1:]) if pin else None
    spawn = get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build_bundle(Path(tmp), args.model)
        manifest = json.loads((bundle / "manifest.json").read_text())
        where = (
            f"server and ORT pinned to CPU {cpus[0]}, load generator to CPUs {cpus[1:]}"
            if pin
            else f"not pinned ({len(cpus)} CPUs shared)"
        )
        print(
            f"model {args.bundle or args.model}: {manifest['model']['name']} "
            f"{manifest['model']['version']}, {manifest['precision']} for {manifest['profile']}; "
            + where
        )
        proc, grpc_addr, http_port = start_server(
            bundle, Path(tmp) / "serve.log", *args.server_arg, cpus=server_cpus
        )
        try:
            with (
                ProcessPoolExecutor(1, spawn, _pin_self, (client_cpus,)) as client,
                ProcessPoolExecutor(1, spawn, _load_reference, (bundle, server_cpus)) as ref,
            ):
                run(args, manifest["model"]["name"], grpc_addr, http_port, client, ref)
        finally:
            terminate(proc, 30)


def run(  # noqa: PLR0917
    args: argparse.Namespace,
    name: str,
    grpc_addr: str,
    http_port: int,
    client: ProcessPoolExecutor,
    ref: ProcessPoolExecutor,
) -> None:
    """Latency rounds, then throughput rounds; one line per round and a summary."""
    labels = {
        "ort": "ORT session.run (in-process)",
        "grpc": "gRPC ModelInfer (raw contents)",
        "live": "gRPC ServerLive (stack floor)",
        "rest": "REST infer (JSON, keep-alive)",
    }
    samples: dict[str, list[np.ndarray]] = {k: [] for k in labels}
    for _ in range(args.rounds):
        samples["ort"].append(ref.submit(ort_latency, args.requests).result())
        for key, ms in (
            client.submit(client_latency, grpc_addr, http_port, name, args.requests)
            .result()
            .items()
        ):
            samples[key].append(ms)
    print(f"batch 1, {args.requests} sequential requests x {args.rounds} rounds (interleaved)")
    print(f"{'':34}{'median ms':>10}{'p95 ms':>9}{'overhead ms':>13}{'per-round medians':>30}")
    base = float(np.median(np.concatenate(samples["ort"])))
    for key, runs in samples.items():
        ms = np.concatenate(runs)
        med, p95 = float(np.median(ms)), float(np.percentile(ms, 95))
        over = f"{med - base:+.3f}" if key in {"grpc", "rest"} else ""
        rounds = " ".join(f"{np.median(r):.3f}" for r in runs)
        print(f"{labels[key]:34}{med:10.3f}{p95:9.3f}{over:>13}{rounds:>30}")

    c, s = args.concurrency, args.seconds
    rows: dict[str, list[float]] = {k: [] for k in ("ours", "avg", "ort_c", "ort_avg", "live")}
    print(f"\nconcurrency {c}, batch-1 gRPC requests, {s:g} s per measurement")
    for r in range(args.rounds):
        before = batch_histogram(http_port)
        ours = client.submit(client_throughput, grpc_addr, name, "ModelInfer", c, s).result()
        avg, hist = merged_sizes(before, batch_histogram(http_port))
        live = client.submit(client_throughput, grpc_addr, name, "ServerLive", c, s).result()
        ort_c = ref.submit(ort_throughput, c, s).result()
        ort_avg = ref.submit(ort_throughput, max(1, round(avg)), s).result()
        for key, value in zip(rows, (ours, avg, ort_c, ort_avg, live), strict=True):
            rows[key].append(value)
        print(
            f"round {r + 1}: served {ours:6.0f} rows/s, merged batches avg {avg:4.1f} rows "
            f"({hist}) | ORT batch {c} {ort_c:6.0f} rows/s, batch {round(avg)} {ort_avg:6.0f} "
            f"rows/s | ServerLive {live:6.0f} req/s"
        )
    med = {k: float(np.median(v)) for k, v in rows.items()}
    ideal = 1 / (1 / med["live"] + 1 / med["ort_avg"])  # front end and model costs add up
    print(
        f"median of {args.rounds}: served {med['ours']:.0f} rows/s at avg batch "
        f"{med['avg']:.1f} | vs ORT batch {c}: {med['ours'] / med['ort_c']:.2f}x | vs ORT "
        f"at the avg merged batch: {med['ours'] / med['ort_avg']:.2f}x | vs ServerLive: "
        f"{med['ours'] / med['live']:.2f}x | vs front-end floor + model "
        f"(1/(1/live + 1/ort_avg) = {ideal:.0f}/s): {med['ours'] / ideal:.2f}x"
    )


if __name__ == "__main__":
    main()
