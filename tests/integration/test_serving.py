"""The inference server on loopback: stock Triton clients, bad input, batching, swaps, auth."""

from __future__ import annotations

import asyncio
import http.client
import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from edgeai.profiles import load_profile
from edgeai.serving._proto import grpc_predict_v2_pb2 as pb
from edgeai.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from edgeai.serving.model import ModelHolder, ServedModel, load_served
from edgeai.serving.server import InferenceServer, ServingConfig

pytestmark = pytest.mark.integration
PROBE = Path(__file__).with_name("triton_probe.py")


class LiveServer:
    """An :class:`InferenceServer` on its own event loop in a daemon thread."""

    def __init__(self, holder: ModelHolder, **config: Any) -> None:
        self.holder = holder
        self.server = InferenceServer(holder, ServingConfig(grpc_port=0, http_port=0, **config))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        self.call(self.server.start())
        return self

    def __exit__(self, *_: object) -> None:
        self.call(self.server.stop(5))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.server.grpc_port}"

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.server.http_port}"

    def rest(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.http_port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(data)
        except ValueError:
            return resp.status, data.decode(errors="replace")

    def stub(self) -> tuple[grpc.Channel, Any]:
        channel = grpc.insecure_channel(
            self.grpc_addr, options=[("grpc.max_send_message_length", -1)]
        )
        return channel, pb_grpc.GRPCInferenceServiceStub(channel)


def infer_request(x: np.ndarray, model: str = "model", version: str = "") -> Any:
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=x.shape)
        ],
        raw_input_contents=[np.ascontiguousarray(x, np.float32).tobytes()],
    )


def rest_body(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> bytes:
    tensor = {
        "name": name,
        "datatype": datatype,
        "shape": list(x.shape),
        "data": x.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def logits(response: Any) -> np.ndarray:
    shape = tuple(response.outputs[0].shape)
    return np.frombuffer(response.raw_output_contents[0], np.float32).reshape(shape)


@pytest.fixture(scope="module")
def served(tiny_bundle: Path) -> ServedModel:
    return load_served(tiny_bundle, load_profile("x86-64-avx2"))


@pytest.fixture(scope="module")
def golden(tiny_bundle: Path) -> np.ndarray:
    with np.load(tiny_bundle / "golden.npz") as data:
        return np.ascontiguousarray(next(data[k] for k in data.files if k.startswith("in."))[:8])


@pytest.fixture(scope="module")
def live(served: ServedModel) -> Iterator[LiveServer]:
    # A queue delay makes concurrent requests merge reliably on a busy shared machine.
    with LiveServer(ModelHolder(served), max_queue_delay_us=5000, max_request_bytes=2**20) as s:
        yield s


def reference(served: ServedModel, x: np.ndarray) -> np.ndarray:
    return served.session.run(None, {"input": x})[0]


def test_stock_tritonclient_gets_metadata_readiness_and_exact_predictions(
    live: LiveServer, served: ServedModel, golden: np.ndarray, tmp_path: Path
) -> None:
    np.savez(tmp_path / "x.npz", x=golden)
    cmd = [
        sys.executable,
        str(PROBE),
        live.grpc_addr,
        live.http_addr,
        "model",
        str(tmp_path / "x.npz"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    for key in ("live", "ready", "model_ready"):
        assert got[f"grpc_{key}"] is True
        assert got[f"http_{key}"] is True
    for meta in (got["grpc_model_metadata"], got["http_model_metadata"]):
        assert meta["name"] == "model"
        assert meta["versions"] == [served.version]
        assert meta["platform"] == "onnxruntime_onnx"
        assert meta["inputs"][0]["datatype"] == "FP32"
        assert [int(d) for d in meta["inputs"][0]["shape"]] == [-1, 1, 28, 28]
    assert got["http_server_metadata"]["name"] == got["grpc_server_metadata"]["name"] == "edgeai"
    want = reference(served, golden)
    np.testing.assert_allclose(np.array(got["grpc_outputs"]), want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.array(got["http_outputs"]), want, rtol=1e-6, atol=1e-5)
    assert got["grpc_version"] == got["http_version"] == served.version
    assert got["grpc_unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "unknown model 'nope'" in got["grpc_unknown_model"]["message"]
    assert got["http_unknown_model"]["status"] == "404"
    assert got["grpc_bad_shape"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert got["grpc_no_token"]["status"] == "ok"  # no token configured: open


X1 = np.full((1, 1, 28, 28), 0.5, np.float32)
TOKEN = "s3cret"  # noqa: S105  (a test token)
BASE: dict[str, Any] = {
    "model": "model",
    "version": "",
    "name": "input",
    "datatype": "FP32",
    "shape": [1, 1, 28, 28],
    "count": None,
    "outputs": [],
}
# case -> (changes to BASE, HTTP status, gRPC code, text the message must hold)
BAD: dict[str, tuple[dict[str, Any], int, str, str]] = {
    "wrong dtype": ({"datatype": "FP64"}, 400, "INVALID_ARGUMENT", "must be FP32"),
    "wrong shape": ({"shape": [1, 1, 28, 27]}, 400, "INVALID_ARGUMENT", "must have shape"),
    "wrong rank": ({"shape": [1, 784]}, 400, "INVALID_ARGUMENT", "rank 4"),
    "size mismatch": ({"shape": [2, 1, 28, 28], "count": 784}, 400, "INVALID_ARGUMENT", "needs"),
    "unknown input": ({"name": "image"}, 400, "INVALID_ARGUMENT", "unknown input 'image'"),
    "unknown output": ({"outputs": ["probs"]}, 400, "INVALID_ARGUMENT", "unknown output 'probs'"),
    "unknown model": ({"model": "mnist"}, 404, "NOT_FOUND", "unknown model 'mnist'"),
    "unknown version": ({"version": "v9"}, 404, "NOT_FOUND", "unknown version 'v9'"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_gets_4xx_with_a_message_over_both_protocols(live: LiveServer, case: str) -> None:
    changes, status, code, text = BAD[case]
    r = {**BASE, **changes}
    dtype = np.float64 if r["datatype"] == "FP64" else np.float32
    arr = np.full(r["count"] or int(np.prod(r["shape"])), 0.5, dtype)
    doc = {
        "inputs": [
            {
                "name": r["name"],
                "datatype": r["datatype"],
                "shape": r["shape"],
                "data": arr.tolist(),
            }
        ],
        "outputs": [{"name": o} for o in r["outputs"]],
    }
    version = f"/versions/{r['version']}" if r["version"] else ""
    path = f"/v2/models/{r['model']}{version}/infer"
    got_status, body = live.rest("POST", path, json.dumps(doc).encode())
    assert (got_status, text in body["error"]) == (status, True), body
    channel, stub = live.stub()
    tensor = pb.ModelInferRequest.InferInputTensor
    request = pb.ModelInferRequest(
        model_name=r["model"],
        model_version=r["version"],
        inputs=[tensor(name=r["name"], datatype=r["datatype"], shape=r["shape"])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in r["outputs"]],
        raw_input_contents=[arr.tobytes()],
    )
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=30)
    assert err.value.code().name == code
    assert text in err.value.details()


def test_malformed_and_oversized_bodies(live: LiveServer) -> None:
    status, body = live.rest("POST", "/v2/models/model/infer", b'{"inputs": [')
    assert status == 400
    assert "not valid JSON" in body["error"]
    assert live.rest("POST", "/v2/models/model/infer", b"[1, 2]")[0] == 400
    assert live.rest("POST", "/v2/models/model/infer", b"")[0] == 400
    big = rest_body(np.zeros((200, 1, 28, 28), np.float32))  # ~ 600 kB of "0.0, "
    big = big + b" " * (2**20 + 1 - len(big))
    assert live.rest("POST", "/v2/models/model/infer", big)[0] == 413
    channel, stub = live.stub()
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request(np.zeros((400, 1, 28, 28), np.float32)), timeout=30)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Typed contents work too, and a count that does not match the shape is refused.
    request = infer_request(X1)
    del request.raw_input_contents[:]
    request.inputs[0].contents.fp32_contents.extend(X1.ravel().tolist())
    with live.stub()[0] as ch:
        ok = pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=30)
        assert logits(ok).shape == (1, 10)
        request.inputs[0].contents.fp32_contents.append(1.0)
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.GRPCInferenceServiceStub(ch).ModelInfer(request, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert live.rest("GET", "/v2/health/live")[0] == 200


async def _burst(addr: str, xs: list[np.ndarray]) -> list[Any]:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return await asyncio.gather(*(stub.ModelInfer(infer_request(x), timeout=60) for x in xs))


def _metric(text: str, name: str) -> float:
    lines = [ln for ln in text.splitlines() if ln.startswith(name + " ")]
    return float(lines[0].split()[1])


def test_concurrent_requests_are_merged_and_results_equal_unbatched(
    live: LiveServer, served: ServedModel
) -> None:
    rng = np.random.default_rng(0)
    xs = [rng.random((int(rng.integers(1, 4)), 1, 28, 28), dtype=np.float32) for _ in range(24)]
    before = live.server.stats()
    responses = asyncio.run(_burst(live.grpc_addr, xs))
    for x, response in zip(xs, responses, strict=True):
        np.testing.assert_allclose(logits(response), reference(served, x), rtol=1e-5, atol=1e-5)
    after = live.server.stats()
    executions = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == sum(len(x) for x in xs)
    assert executions < len(xs) / 2, f"{executions} executions for {len(xs)} requests"
    status, text = live.rest("GET", "/metrics")
    assert status == 200
    assert _metric(text, "edgeai_serving_batch_requests_count") < _metric(
        text, "edgeai_serving_batch_requests_sum"
    )


def test_swap_under_load_fails_nothing_and_switches_versions(
    served: ServedModel, tiny_bundle: Path, tmp_path: Path
) -> None:
    copy = shutil.copytree(tiny_bundle, tmp_path / "v2")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["version"] = "v2-" + served.version
    (copy / "manifest.json").write_text(json.dumps(manifest))
    newer = load_served(copy, load_profile("x86-64-avx2"))
    x = np.full((1, 1, 28, 28), 0.25, np.float32)
    with LiveServer(ModelHolder(served)) as live:

        async def load() -> list[str]:
            async with grpc.aio.insecure_channel(live.grpc_addr) as channel:
                stub = pb_grpc.GRPCInferenceServiceStub(channel)
                versions: list[str] = []

                async def one_client() -> None:
                    for _ in range(25):
                        response = await stub.ModelInfer(infer_request(x), timeout=60)
                        versions.append(response.model_version)
                        if len(versions) == 100:
                            assert live.holder.swap(newer) is served

                await asyncio.gather(*(one_client() for _ in range(8)))
                after = await stub.ModelInfer(infer_request(x), timeout=60)
                return [*versions, after.model_version]

        versions = asyncio.run(load())
        stats = live.server.stats()
    assert len(versions) == 201
    assert set(versions) == {served.version, newer.version}
    assert versions[-1] == newer.version
    assert versions[:100] == [served.version] * 100
    assert stats["model_version"] == newer.version


def test_bearer_token_guards_everything_but_health(served: ServedModel) -> None:
    with LiveServer(ModelHolder(served), token=TOKEN) as live:
        path = "/v2/models/model/infer"
        assert live.rest("POST", path, rest_body(X1))[0] == 401
        wrong = {"Authorization": "Bearer nope"}
        assert live.rest("POST", path, rest_body(X1), wrong)[0] == 401
        good = {"Authorization": f"Bearer {TOKEN}"}
        status, body = live.rest("POST", path, rest_body(X1), good)
        assert (status, body["model_version"]) == (200, served.version)
        assert live.rest("GET", "/v2/models/model")[0] == 401
        assert live.rest("GET", "/metrics")[0] == 401
        assert live.rest("GET", "/metrics", headers=good)[0] == 200
        assert live.rest("GET", "/v2/health/ready")[0] == 200
        assert live.rest("GET", "/v2/models/model/ready")[0] == 200
        channel, stub = live.stub()
        with channel:
            assert stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(infer_request(X1), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            meta = [("authorization", f"Bearer {TOKEN}")]
            assert stub.ModelInfer(infer_request(X1), timeout=10, metadata=meta).model_version


def test_readiness_follows_the_holder_and_stats_report(served: ServedModel) -> None:
    holder = ModelHolder(None)
    with LiveServer(holder) as live:
        assert live.rest("GET", "/v2/health/live")[0] == 200
        assert live.rest("GET", "/v2/health/ready")[0] == 400  # spec: 4xx means "false"
        assert live.rest("POST", "/v2/models/model/infer", rest_body(X1))[0] == 503
        holder.swap(served)
        assert live.rest("GET", "/v2/health/ready")[0] == 200
        status, body = live.rest("POST", "/v2/models/model/infer", rest_body(X1))
        assert status == 200
        assert np.asarray(body["outputs"][0]["data"]).shape == (10,)
        assert live.rest("GET", "/v2/models/other/ready")[0] == 404
        stats = live.server.stats()
    assert stats["request_count"] >= 6
    assert stats["inference_count"] == 1
    assert stats["latency_p50_ms"] is not None
    assert stats["model_version"] == served.version
