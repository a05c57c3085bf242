"""``edgeai agent serve`` as a real process: stock clients, SIGTERM drain, exit codes, no torch."""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration
EDGEAI = Path(sys.executable).with_name("edgeai")
PROBE = Path(__file__).with_name("triton_probe.py")
LISTENING = re.compile(r"grpc=([\d.]+:\d+) http=http://([\d.]+):(\d+)")


def _wait_for(proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 60) -> re.Match[str]:
    """Poll the server's log for its "listening" line, under a deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = LISTENING.search(text)
        if match:
            return match
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{text}")
        time.sleep(0.05)
    pytest.fail(f"server not listening after {deadline_s} s:\n{log.read_text()}")


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, match: re.Match[str]) -> None:
        self.proc, self.log = proc, log
        self.grpc_addr = match.group(1)
        self.http_port = int(match.group(3))

    def rest(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=30)
        try:
            conn.request(method, path, body=body)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()


def _start(bundle: Path, tmp: Path, *extra: str) -> Served:
    log = tmp / "serve.log"
    with log.open("wb") as out:
        cmd = [str(EDGEAI), "agent", "serve", str(bundle), "--grpc-port", "0", "--http-port", "0"]
        proc = subprocess.Popen([*cmd, *extra], stdout=out, stderr=subprocess.STDOUT)
    return Served(proc, log, _wait_for(proc, log))


@pytest.fixture
def serve() -> Iterator[list[Served]]:
    started: list[Served] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
        s.proc.wait(10)


def _infer_body(x: np.ndarray) -> bytes:
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": list(x.shape),
        "data": x.ravel().tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


def test_cli_serves_stock_clients_then_drains_on_sigterm(
    tiny_bundle: Path, tmp_path: Path, serve: list[Served]
) -> None:
    import onnxruntime as ort  # noqa: PLC0415

    # A long queue delay holds a lone request in flight, so SIGTERM lands while it waits.
    s = _start(tiny_bundle, tmp_path, "--max-queue-delay-us", "1000000")
    serve.append(s)
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    http_addr = f"127.0.0.1:{s.http_port}"
    probe = [sys.executable, str(PROBE), s.grpc_addr, http_addr, "model", str(tmp_path / "x.npz")]
    got = json.loads(subprocess.run(probe, capture_output=True, check=True, timeout=120).stdout)
    want = ort.InferenceSession(str(tiny_bundle / "model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.array(got["grpc_outputs"]), want, atol=1e-6)
    np.testing.assert_allclose(np.array(got["http_outputs"]), want, atol=1e-5)
    assert got["grpc_ready"]
    assert got["http_model_ready"]

    result: list[tuple[int, bytes]] = []
    client = threading.Thread(
        target=lambda: result.append(s.rest("POST", "/v2/models/model/infer", _infer_body(x)))
    )
    client.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the request sits in the batcher's queue
        metrics = s.rest("GET", "/metrics")[1].decode()
        if "edgeai_serving_queue_depth 1.0" in metrics:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the request never reached the queue")
    s.proc.send_signal(signal.SIGTERM)
    client.join(30)
    assert s.proc.wait(30) == 0
    assert result, "the in-flight request got no answer"
    status, body = result[0]
    assert status == 200, body
    np.testing.assert_allclose(json.loads(body)["outputs"][0]["data"], want.ravel(), atol=1e-5)
    log = s.log.read_text()
    assert "draining" in log
    assert "stopped" in log
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", s.http_port), timeout=5).close()


def test_cli_bad_bundle_exits_2_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    cmd = [str(EDGEAI), "agent", "serve", str(tmp_path / "empty"), "--grpc-port", "0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "not a bundle directory" in proc.stderr
    cmd = [str(EDGEAI), "agent", "serve", str(tmp_path), "--profile", "no-such-device"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "no-such-device" in proc.stderr


def test_cli_port_in_use_exits_1(tiny_bundle: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [str(EDGEAI), "agent", "serve", str(tiny_bundle), "--grpc-port", "0"]
        proc = subprocess.run(
            [*cmd, "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"REST cannot listen on 127.0.0.1:{port}" in proc.stderr


SERVE_AND_REPORT = """
import asyncio, json, sys, urllib.request
from pathlib import Path
from edgeai.profiles import load_profile
from edgeai.serving.model import ModelHolder, load_served
from edgeai.serving.server import InferenceServer, ServingConfig

async def main():
    model = load_served(Path(sys.argv[1]), load_profile("x86-64-avx2"))
    server = InferenceServer(ModelHolder(model), ServingConfig(grpc_port=0, http_port=0))
    await server.start()
    body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 1, 28, 28],
                                   "data": [0.5] * 784}]}).encode()
    url = f"http://127.0.0.1:{server.http_port}/v2/models/model/infer"
    reply = await asyncio.to_thread(lambda: urllib.request.urlopen(url, body).read())
    await server.stop(1)
    heavy = [m for m in ("torch", "flwr", "ray", "opacus") if m in sys.modules]
    print(json.dumps({"heavy": heavy, "outputs": json.loads(reply)["outputs"][0]["shape"]}))

asyncio.run(main())
"""


def test_serving_stack_never_imports_torch(tiny_bundle: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SERVE_AND_REPORT, str(tiny_bundle)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report = json.loads(proc.stdout)
    assert report == {"heavy": [], "outputs": [1, 10]}
