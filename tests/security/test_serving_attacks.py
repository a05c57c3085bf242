"""Attacks on the KServe v2 server over real sockets on 127.0.0.1, and fuzzing of its decoders.

Every attack must be refused with a 4xx (gRPC: a client-error code) or a closed
connection, never a 5xx; the server must stay healthy (``/v2/health/ready`` 200 and a
valid inference) after each one; a bad request costs at most one log line; six
concurrent maximum-size requests stay well under the systemd unit's ``MemoryMax=1G``.
``TALLY`` counts attacks tried / refused / survived; the last test prints it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import math
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeai.errors import ConfigError
from edgeai.serving._proto import grpc_predict_v2_pb2 as pb
from edgeai.serving.budget import ByteBudget
from edgeai.serving.errors import OverloadedError, ServingError
from edgeai.serving.grpc_api import parse_grpc_infer
from edgeai.serving.model import ModelHolder, ServedModel, TensorSpec
from edgeai.serving.protocol import (
    array_from_json,
    array_from_raw,
    array_from_values,
    check_tensor,
    json_values,
    parse_rest_infer,
)
from edgeai.serving.server import ServingConfig
from tests.integration.test_serving import LiveServer, infer_request, served

__all__ = ["served"]  # the module fixture, shared with test_serving
EDGEAI = Path(sys.executable).with_name("edgeai")
TOKEN = "attack-test-token"  # noqa: S105  (a test token)
AUTH = f"Bearer {TOKEN}"
INFER = "/v2/models/model/infer"
TALLY = {"tried": 0, "refused": 0, "survived": 0}
X1 = np.full((1, 1, 28, 28), 0.5, np.float32)
CLIENT_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED"}


def _strict(text: str | bytes) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"not strict JSON: {token}")

    return json.loads(text, parse_constant=refuse)


def _doc(data: Any, shape: Any = (1, 1, 28, 28), datatype: str = "FP32") -> dict[str, Any]:
    tensor = {"name": "input", "datatype": datatype, "shape": list(shape), "data": data}
    return {"inputs": [tensor]}


def _body(data: Any, shape: Any = (1, 1, 28, 28), datatype: str = "FP32") -> bytes:
    return json.dumps(_doc(data, shape, datatype)).encode()


# ---------------------------------------------------------------------------- raw HTTP


def raw_http(port: int, request: bytes, timeout: float = 10) -> tuple[int | None, bytes]:
    """Send raw bytes, read until the server closes; (status or None if closed silently, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(OSError):  # the server closed before taking it all
            sock.sendall(request)
        chunks = []
        try:
            while data := sock.recv(65536):
                chunks.append(data)
        except ConnectionResetError:
            pass
        except TimeoutError:
            if not chunks:
                raise
    reply = b"".join(chunks)
    match = re.match(rb"HTTP/1\.[01] (\d{3})", reply)
    _, _, body = reply.partition(b"\r\n\r\n")
    return (int(match.group(1)) if match else None), body


def http_request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    auth: bool = True,
    raw_headers: bytes = b"",
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if auth:
        lines.append(f"Authorization: {AUTH}")
    for k, v in (headers or {"Content-Length": str(len(body))}).items():
        lines.append(f"{k}: {v}")
    return "\r\n".join(lines).encode() + b"\r\n" + raw_headers + b"\r\n" + body


def check_healthy(live: LiveServer) -> None:
    """The server answers readiness and a valid inference (over both protocols)."""
    status, _ = raw_http(live.server.http_port, http_request("GET", "/v2/health/ready"))
    assert status == 200
    status, body = raw_http(
        live.server.http_port, http_request("POST", INFER, _body(X1.ravel().tolist()))
    )
    assert status == 200, body
    assert len(_strict(body)["outputs"][0]["data"]) == 10
    channel, stub = live.stub()
    with channel:
        reply = stub.ModelInfer(infer_request(X1), timeout=10, metadata=[("authorization", AUTH)])
    assert reply.model_version


def tally(live: LiveServer, refused: bool) -> None:
    """Count one attack: refused (4xx / client code / closed) and survived (still healthy)."""
    TALLY["tried"] += 1
    TALLY["refused"] += int(refused)
    check_healthy(live)
    TALLY["survived"] += 1


@pytest.fixture(scope="module")
def live(served: ServedModel) -> Iterator[LiveServer]:
    # Small limits so the timeouts and the budget show within a fast test.
    with LiveServer(
        ModelHolder(served),
        token=TOKEN,
        max_request_bytes=2**20,
        max_inflight_bytes=2**21,
        idle_timeout_s=1.0,
        body_timeout_s=1.0,
    ) as server:
        yield server


DEEP = b"[" * 100_000 + b"]" * 100_000
BOMB = gzip.compress(b" " * (4 * 2**20))  # 4 KiB that inflate to 4 MiB, over the 1 MiB limit
HUGE = [2**31 - 1, 1, 28, 28]
MULTIPART = b"--b\r\n\r\nx\r\n--b--"
# name -> (raw request, the statuses that count as a correct refusal)
REST_ATTACKS: dict[str, tuple[bytes, set[int]]] = {
    "gzip header, body not gzip": (
        http_request(
            "POST", INFER, b"not gzip at all", {"Content-Encoding": "gzip", "Content-Length": "15"}
        ),
        {400},
    ),
    "deflate header, garbage": (
        http_request(
            "POST", INFER, b"\x00\x01\x02", {"Content-Encoding": "deflate", "Content-Length": "3"}
        ),
        {400},
    ),
    "gzip bomb": (
        http_request(
            "POST", INFER, BOMB, {"Content-Encoding": "gzip", "Content-Length": str(len(BOMB))}
        ),
        {413},
    ),
    "JSON nested 100,000 deep": (http_request("POST", INFER, DEEP), {400}),
    "data nested 900 deep": (
        http_request("POST", INFER, _body(json.loads("[" * 900 + "1" + "]" * 900))),
        {400},
    ),
    "authorization not UTF-8": (
        http_request(
            "POST", INFER, b"{}", auth=False, raw_headers=b"Authorization: Bearer \xff\xfe\r\n"
        ),
        {401},
    ),
    "authorization Latin-1": (
        http_request(
            "POST", INFER, b"{}", auth=False, raw_headers=b"Authorization: Bearer caf\xe9\r\n"
        ),
        {401},
    ),
    "authorization control char": (
        http_request(
            "POST", INFER, b"{}", auth=False, raw_headers=b"Authorization: Bearer \x01\r\n"
        ),
        {400},
    ),
    "no token": (http_request("POST", INFER, _body(X1.ravel().tolist()), auth=False), {401}),
    "booleans as FP32": (http_request("POST", INFER, _body([True] * 784)), {400}),
    "booleans mixed into numbers": (
        http_request("POST", INFER, _body([1.0] * 783 + [False])),
        {400},
    ),
    "strings as FP32": (http_request("POST", INFER, _body(["1.0"] * 784)), {400}),
    "null as FP32": (http_request("POST", INFER, _body([None] * 784)), {400}),
    "FP32 overflow 1e39": (http_request("POST", INFER, _body([1e39] * 784)), {400}),
    "object as data": (http_request("POST", INFER, _body({"a": 1})), {400}),
    "traversal %2e%2e%2f": (http_request("POST", "/v2/models/%2e%2e%2fx/infer", b"{}"), {400, 404}),
    "traversal ..%2f..%2f": (
        http_request("POST", "/v2/models/..%2f..%2fetc%2fpasswd/infer", b"{}"),
        {400, 404},
    ),
    "traversal double-encoded": (
        http_request("POST", "/v2/models/%252e%252e%252fx/infer", b"{}"),
        {400, 404},
    ),
    "traversal raw ../": (
        http_request("POST", "/v2/models/../../etc/passwd/infer", b"{}"),
        {400, 404},
    ),
    "traversal in version": (
        http_request("POST", "/v2/models/model/versions/%2e%2e/infer", b"{}"),
        {400, 404},
    ),
    "NUL in model name": (http_request("POST", "/v2/models/model%00/infer", b"{}"), {400, 404}),
    "traversal model metadata": (
        http_request("GET", "/v2/models/%2e%2e%2f%2e%2e%2fetc"),
        {400, 404},
    ),
    "Content-Length over the limit": (
        http_request("POST", INFER, b"{}", {"Content-Length": str(2**20 + 1)}),
        {413},
    ),
    "chunked over the limit": (
        http_request(
            "POST",
            INFER,
            b"".join(b"%x\r\n%s\r\n" % (65536, b" " * 65536) for _ in range(20)) + b"0\r\n\r\n",
            {"Transfer-Encoding": "chunked"},
        ),
        {413},
    ),
    "Content-Length and chunked (smuggling)": (
        http_request(
            "POST", INFER, b"0\r\n\r\n", {"Content-Length": "5", "Transfer-Encoding": "chunked"}
        ),
        {400},
    ),
    "two Content-Lengths": (
        http_request("POST", INFER, b"{}", {"Content-Length": "2", "content-length": "7"}),
        {400},
    ),
    "negative Content-Length": (
        http_request("POST", INFER, b"{}", {"Content-Length": "-2"}),
        {400},
    ),
    "Content-Type octet-stream, not JSON": (
        http_request(
            "POST",
            INFER,
            b"\x00" * 64,
            {"Content-Type": "application/octet-stream", "Content-Length": "64"},
        ),
        {400},
    ),
    "Content-Type multipart": (
        http_request(
            "POST",
            INFER,
            MULTIPART,
            {
                "Content-Type": "multipart/form-data; boundary=b",
                "Content-Length": str(len(MULTIPART)),
            },
        ),
        {400},
    ),
    "XML body": (
        http_request(
            "POST", INFER, b"<inputs/>", {"Content-Type": "text/xml", "Content-Length": "9"}
        ),
        {400},
    ),
    "invalid UTF-8 in JSON": (
        http_request("POST", INFER, b'{"id": "\xff\xfe", "inputs": []}'),
        {400},
    ),
    "UTF-16 JSON": (
        http_request("POST", INFER, json.dumps(_doc([True] * 784)).encode("utf-16")),
        {400},
    ),
    "UTF-8 BOM": (http_request("POST", INFER, b"\xef\xbb\xbf" + _body(X1.ravel().tolist())), {400}),
    "huge shape claim": (http_request("POST", INFER, _body([0.5] * 784, HUGE)), {400}),
    "shape product over 2**64": (
        http_request("POST", INFER, _body([0.5], [2**40, 1, 2**40, 2**40])),
        {400},
    ),
    "negative shape": (http_request("POST", INFER, _body([0.5] * 784, [-1, 1, 28, 28])), {400}),
    "zero shape": (http_request("POST", INFER, _body([], [0, 1, 28, 28])), {400}),
    "float shape": (http_request("POST", INFER, _body([0.5] * 784, [1.0, 1, 28, 28])), {400}),
    "shape of 100,000 dims": (http_request("POST", INFER, _body([0.5], [1] * 100_000)), {400}),
    "binary extension, sizes mismatched": (
        http_request(
            "POST",
            INFER,
            b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],'
            b'"parameters":{"binary_data_size":3136}}]}' + b"\x00" * 10,
            {"Inference-Header-Content-Length": "85", "Content-Length": "105"},
        ),
        {400},
    ),
    "binary_data_size without data": (
        http_request(
            "POST",
            INFER,
            b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,1,28,28],'
            b'"parameters":{"binary_data_size":999999999}}]}',
        ),
        {400},
    ),
    "empty body": (http_request("POST", INFER, b""), {400}),
    "id not a string": (
        http_request("POST", INFER, json.dumps({**_doc([0.5] * 784), "id": [1]}).encode()),
        {400},
    ),
    "200 headers": (
        http_request("GET", "/v2", raw_headers=b"".join(b"X-%d: y\r\n" % i for i in range(200))),
        {400, 431},
    ),
    "16 KiB header line": (
        http_request("GET", "/v2", raw_headers=b"X-Big: " + b"a" * 16384 + b"\r\n"),
        {400, 431},
    ),
    "16 KiB request line": (http_request("GET", "/v2/" + "a" * 16384), {400, 414}),
    "not HTTP at all": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64, {400}),
    "bad method": (b"BREW /v2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {400, 404, 405}),
    # aiohttp answers HTTP/0.9 in kind (a body, no status line): here our 401.
    "HTTP/0.9 style": (b"GET /v2\r\n\r\n", {None, 400, 401}),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", list(REST_ATTACKS))
def test_rest_attack_is_refused_and_the_server_survives(live: LiveServer, name: str) -> None:
    request, want = REST_ATTACKS[name]
    status, body = raw_http(live.server.http_port, request)
    assert status in want, (status, body[:300])
    if body.startswith(b"{"):  # ours (aiohttp's own refusals are plain text)
        assert _strict(body)["error"]
    else:
        assert status is not None
    tally(live, refused=True)


@pytest.mark.integration
def test_nan_outputs_are_strict_json_strings(live: LiveServer) -> None:
    # NaN inputs make an fp32 CNN's logits NaN (an int8 bundle's QuantizeLinear maps them
    # to numbers); either way the reply must parse as strict JSON, non-finite as strings.
    body = http_request("POST", INFER, _body([float("nan")] * 784))
    status, reply = raw_http(live.server.http_port, body)
    assert status == 200, reply
    data = _strict(reply)["outputs"][0]["data"]
    assert all(isinstance(v, float | int) or v in ("NaN", "Infinity", "-Infinity") for v in data)
    assert any(isinstance(v, str) for v in data) or all(math.isfinite(v) for v in data)
    tally(live, refused=False)


@pytest.mark.integration
def test_error_messages_are_bounded(live: LiveServer) -> None:
    body = http_request("POST", INFER, _body([0.5], [1] * 50_000 + [7]))
    status, reply = raw_http(live.server.http_port, body)
    assert status == 400
    assert len(_strict(reply)["error"]) <= 1000
    tally(live, refused=True)


def _wait_closed(sock: socket.socket, within_s: float) -> bytes:
    """Read until the server closes ``sock``; fail if it is still open after ``within_s``."""
    sock.settimeout(within_s)
    got = b""
    try:
        while data := sock.recv(4096):
            got += data
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {within_s} s (got {got[:80]!r})")
    except ConnectionResetError:
        pass
    return got


@pytest.mark.integration
@pytest.mark.parametrize(
    "sent",
    [
        b"",  # connects and says nothing
        b"POST /v2/models/model/infer HTTP/1.1\r\nHost: x\r\n",  # headers never finished
        b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n",  # a request, then idle keep-alive
    ],
    ids=["silent", "partial-headers", "idle-keep-alive"],
)
def test_rest_closes_stalled_connections(live: LiveServer, sent: bytes) -> None:
    # idle_timeout_s is 1 s here; 10 s is the deadline for "closed", not a measurement.
    with socket.create_connection(("127.0.0.1", live.server.http_port)) as sock:
        sock.sendall(sent)
        _wait_closed(sock, 10)
    tally(live, refused=True)


@pytest.mark.integration
def test_rest_slow_body_gets_408_and_a_closed_connection(live: LiveServer) -> None:
    head = http_request("POST", INFER, b"", {"Content-Length": "1000"})
    with socket.create_connection(("127.0.0.1", live.server.http_port)) as sock:
        sock.sendall(head + b'{"inputs": [')  # and then nothing: body_timeout_s is 1 s
        reply = _wait_closed(sock, 10)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    tally(live, refused=True)


@pytest.mark.integration
@pytest.mark.parametrize(
    "sent",
    [b"", b"PRI * HTTP/2.0\r\n", b"\x00" * 100],
    ids=["silent", "partial-preface", "garbage"],
)
def test_grpc_closes_stalled_connections(live: LiveServer, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", live.server.grpc_port)) as sock:
        sock.sendall(sent)
        _wait_closed(sock, 10)
    tally(live, refused=True)


def _grpc_attack(**changes: Any) -> Any:
    request = infer_request(X1)
    tensor = request.inputs[0]
    if "shape" in changes:
        del tensor.shape[:]
        tensor.shape.extend(changes["shape"])
    if "raw" in changes:
        request.raw_input_contents[0] = changes["raw"]
    if "datatype" in changes:
        tensor.datatype = changes["datatype"]
    if "model" in changes:
        request.model_name = changes["model"]
    if "contents" in changes:
        del request.raw_input_contents[:]
        field, values = changes["contents"]
        getattr(tensor.contents, field).extend(values)
    return request


GRPC_ATTACKS: dict[str, tuple[Any, str]] = {
    "negative shape": (_grpc_attack(shape=[-1, 1, 28, 28]), "INVALID_ARGUMENT"),
    "huge shape claim, small raw": (_grpc_attack(shape=HUGE), "INVALID_ARGUMENT"),
    "shape product over 2**64": (_grpc_attack(shape=[2**31 - 1] * 4), "INVALID_ARGUMENT"),
    "int64 min shape": (_grpc_attack(shape=[-(2**63), 1, 28, 28]), "INVALID_ARGUMENT"),
    "raw shorter than shape": (_grpc_attack(raw=b"\x00" * 3135), "INVALID_ARGUMENT"),
    "raw longer than shape": (_grpc_attack(raw=b"\x00" * 3140), "INVALID_ARGUMENT"),
    "raw empty": (_grpc_attack(raw=b""), "INVALID_ARGUMENT"),
    "datatype BYTES": (_grpc_attack(datatype="BYTES"), "INVALID_ARGUMENT"),
    "datatype garbage": (_grpc_attack(datatype="\u202eFP32"), "INVALID_ARGUMENT"),
    "traversal model name": (_grpc_attack(model="../../etc/passwd"), "NOT_FOUND"),
    "bools in contents": (
        _grpc_attack(contents=("bool_contents", [True] * 784)),
        "INVALID_ARGUMENT",
    ),
    "ints in contents for FP32": (
        _grpc_attack(contents=("int_contents", [1] * 784)),
        "INVALID_ARGUMENT",
    ),
    "over the message limit": (_grpc_attack(raw=b"\x00" * (2**20 + 8)), "RESOURCE_EXHAUSTED"),
}


@pytest.mark.integration
@pytest.mark.parametrize("name", list(GRPC_ATTACKS))
def test_grpc_attack_is_refused_and_the_server_survives(live: LiveServer, name: str) -> None:
    request, code = GRPC_ATTACKS[name]
    channel, stub = live.stub()
    with channel, pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request, timeout=10, metadata=[("authorization", AUTH)])
    assert err.value.code().name == code, err.value.details()
    assert len(err.value.details()) <= 1000
    tally(live, refused=True)


@pytest.mark.integration
def test_grpc_wrong_tokens_are_refused(live: LiveServer) -> None:
    channel, stub = live.stub()
    for meta in ([], [("authorization", "Bearer nope")], [("authorization", AUTH + " ")]):
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request(X1), timeout=10, metadata=meta)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        tally(live, refused=True)
    channel.close()


# ------------------------------------------------------------------ value kinds, purely

KINDS = {
    "bool": [True, False],
    "int": [1, 2],
    "float": [1.5, 2.0],
    "string": ["1", "2"],
    "null": [None, None],
    "mixed bool and int": [1, True],
    "mixed int and float": [1, 2.5],
    "huge int": [2**70, 1],
    "nested object": [{"a": 1}, 2],
}
# datatype -> the kinds of JSON value it accepts (KServe v2: data is of the datatype)
ACCEPTS = {
    "BOOL": {"bool"},
    "INT8": {"int"},
    "INT32": {"int"},
    "INT64": {"int"},
    "UINT8": {"int"},
    "UINT64": {"int"},
    "FP16": {"int", "float", "mixed int and float"},
    "FP32": {"int", "float", "mixed int and float"},
    "FP64": {"int", "float", "mixed int and float"},  # integers past 64 bits: refused
}


@pytest.mark.parametrize("datatype", list(ACCEPTS))
@pytest.mark.parametrize("kind", list(KINDS))
def test_json_value_kinds_match_the_datatype(datatype: str, kind: str) -> None:
    spec = TensorSpec("x", datatype, (-1,))
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": [2], "data": KINDS[kind]}]}
    )
    maybe_bools = "true" in body or "false" in body
    if kind in ACCEPTS[datatype]:
        arr = array_from_json(spec, [2], KINDS[kind], maybe_bools=maybe_bools)
        assert arr.dtype.name == {"BOOL": "bool"}.get(
            datatype, datatype.lower().replace("fp", "float")
        )
    else:
        with pytest.raises(ServingError) as err:
            array_from_json(spec, [2], KINDS[kind], maybe_bools=maybe_bools)
        assert err.value.http_status == 400
        assert "'x'" in str(err.value)


# ------------------------------------------------------------------------ fuzzing, purely

PURE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=3)
)
json_trees = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=40,
)


@st.composite
def rest_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "tree", "tensor"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "tree":
        return json.dumps(draw(json_trees)).encode()
    shape = draw(st.lists(st.integers(-2, 30) | json_trees, max_size=5))
    data = draw(st.lists(scalars, max_size=60) | json_trees)
    dtype = draw(st.sampled_from(["FP32", "FP64", "INT8", "BOOL", "BYTES", ""]))
    doc = {
        "inputs": [
            {
                "name": draw(st.sampled_from(["input", "x"])),
                "datatype": dtype,
                "shape": shape,
                "data": data,
            }
        ]
    }
    if draw(st.booleans()):
        doc["outputs"] = draw(json_trees)
    return json.dumps(doc).encode()


@PURE
@given(body=rest_bodies())
def test_json_decoder_fuzz_raises_only_typed_errors(served: ServedModel, body: bytes) -> None:
    try:
        request = parse_rest_infer(served, body)
    except ServingError as exc:
        status = exc.http_status
        assert status == 400
        return
    assert request.inputs["input"].dtype == np.float32


@PURE
@given(
    shape=st.lists(st.integers(-(2**63), 2**63 - 1) | st.integers(-2, 8), max_size=5)
    | st.integers(0, 3).map(lambda n: [n, 1, 28, 28]),
    raw=st.binary(max_size=300) | st.integers(0, 3).map(lambda n: b"\x7f" * (3136 * n)),
    values=st.lists(st.floats(width=32), max_size=40)
    | st.integers(0, 2).map(lambda n: [0.5] * (784 * n)),
    dtype=st.sampled_from(["FP32", "FP64", "FP16", "INT8", "UINT64", "BOOL", "BYTES", "", "x"]),
)
def test_binary_decoders_fuzz_raise_only_typed_errors(
    served: ServedModel, shape: list[int], raw: bytes, values: list[float], dtype: str
) -> None:
    # As the server does: the declared shape is checked, then the data decoded against it.
    for build in (
        lambda spec: array_from_raw(spec, shape, raw),
        lambda spec: array_from_values(spec, shape, values),
    ):
        try:
            arr = build(check_tensor(served, "input", dtype, shape))
        except ServingError as exc:
            status = exc.http_status
            assert status == 400
        else:
            assert arr.shape == tuple(shape)
    request = pb.ModelInferRequest(model_name="model")
    request.inputs.add(name="input", datatype=dtype, shape=shape)
    request.raw_input_contents.append(raw)
    try:
        parse_grpc_infer(served, request)
    except ServingError as exc:
        status = exc.http_status
        assert status == 400


@PURE
@given(
    st.lists(st.floats(width=32) | st.sampled_from([math.nan, math.inf, -math.inf]), max_size=30)
)
def test_outputs_are_always_strict_json(values: list[float]) -> None:
    arr = np.asarray(values, np.float32)
    text = json.dumps(json_values(arr), allow_nan=False)
    back = _strict(text)
    for v, b in zip(arr.tolist(), back, strict=True):
        assert (
            b == v
            if math.isfinite(v)
            else b == {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}[repr(v)]
        )


# ------------------------------------------------------------------ fuzzing, live server

LIVE = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
header_bytes = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\r" not in b and b"\n" not in b
)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"\xff", b"POST"]))
    path = draw(
        st.sampled_from([b"/v2/models/model/infer", b"/v2", b"/metrics", b"/v2/models/"])
        | st.binary(min_size=1, max_size=30).map(lambda b: b"/v2/models/" + b.replace(b" ", b"%20"))
    )
    headers = draw(st.lists(st.tuples(header_bytes, header_bytes), max_size=3))
    body = draw(rest_bodies())
    lines = [
        method + b" " + path + b" HTTP/1.1",
        b"Host: x",
        b"Connection: close",
        AUTH.encode().join([b"Authorization: ", b""]),
    ]
    lines += [k + b": " + v for k, v in headers]
    if draw(st.booleans()):
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@pytest.mark.integration
@LIVE
@given(request=raw_requests())
def test_live_fuzz_never_5xx(live: LiveServer, request: bytes) -> None:
    status, body = raw_http(live.server.http_port, request)
    assert status is None or status < 500, body[:300]
    tally(live, refused=status is None or status >= 400)


# ------------------------------------------------ a real `edgeai agent serve` process


class Proc:
    """``edgeai agent serve`` with stdout and stderr in files (stderr lines are counted)."""

    def __init__(self, bundle: Path, tmp: Path, *extra: str) -> None:
        self.out, self.err = tmp / "stdout.log", tmp / "stderr.log"
        cmd = [str(EDGEAI), "agent", "serve", str(bundle), "--grpc-port", "0", "--http-port", "0"]
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen([*cmd, *extra], stdout=out, stderr=err)
        deadline = time.monotonic() + 60
        while not (match := re.search(r"http://[\d.]+:(\d+)", self.out.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"server did not start: {self.err.read_text()}")
            time.sleep(0.05)  # polling for the listening line, under the deadline above
        self.port = int(match.group(1))

    def stderr_lines(self) -> list[str]:
        return self.err.read_text(errors="replace").splitlines()

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(20)


def _serve(bundle: Path, root: Path) -> Iterator[Proc]:
    server = Proc(bundle, root, "--token", TOKEN)
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
        server.proc.wait(10)


@pytest.fixture(scope="module")
def proc(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    yield from _serve(tiny_bundle, tmp_path_factory.mktemp("serve"))


@pytest.fixture
def fresh_proc(tiny_bundle: Path, tmp_path: Path) -> Iterator[Proc]:
    """A server of its own: its peak RSS is this test's, not the whole module's."""
    yield from _serve(tiny_bundle, tmp_path)


LOGGED = [
    "gzip header, body not gzip",
    "gzip bomb",
    "JSON nested 100,000 deep",
    "authorization not UTF-8",
    "authorization control char",
    "booleans as FP32",
    "not HTTP at all",
    "chunked over the limit",
    "Content-Length and chunked (smuggling)",
]


@pytest.mark.integration
def test_bad_requests_cost_at_most_one_log_line_each(proc: Proc) -> None:
    before = len(proc.stderr_lines())
    rounds = 20
    for _ in range(rounds):
        for name in LOGGED:
            status, _ = raw_http(proc.port, REST_ATTACKS[name][0])
            assert status is not None, name
            assert 400 <= status < 500, name
    assert raw_http(proc.port, http_request("GET", "/v2/health/ready"))[0] == 200
    lines = proc.stderr_lines()[before:]
    # Before: 3,300 bad requests wrote 23,601 lines (a traceback each).
    assert len(lines) <= rounds * len(LOGGED), lines[:20]
    assert not any("Traceback" in line for line in lines), lines[:20]
    TALLY["tried"] += rounds * len(LOGGED)
    TALLY["refused"] += rounds * len(LOGGED)
    TALLY["survived"] += rounds * len(LOGGED)


def _post(port: int, body: bytes, results: list[int | None]) -> None:
    results.append(raw_http(port, http_request("POST", INFER, body), timeout=120)[0])


@pytest.mark.integration
def test_six_concurrent_max_size_requests_stay_well_under_memory_max(fresh_proc: Proc) -> None:
    proc = fresh_proc
    # The shipped limit is 16 MiB; "1, " per value packs the most values (and so the most
    # decoding) into it: 7,000 rows of 28x28.
    rows = (16 * 2**20 - 200) // (784 * 3)
    body = _body([1] * (rows * 784), (rows, 1, 28, 28))
    assert len(body) <= 16 * 2**20
    idle = proc.rss_mb()
    results: list[int | None] = []
    threads = [threading.Thread(target=_post, args=(proc.port, body, results)) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    peak = proc.peak_rss_mb()
    print(f"\nRSS idle {idle:.0f} MB, peak over six concurrent 16 MiB requests {peak:.0f} MB")
    assert results == [200] * 6
    # Before the in-flight budget and sliced runs: 712 MB here (1.0 GB on the reporter's
    # device) against MemoryMax=1G; now ~400 MB.
    # Asserted as growth over this process's own idle RSS (idle differs by host and
    # build), and as headroom under the unit's MemoryMax=1G.
    assert peak - idle < 400, (idle, peak)
    assert peak < 800, peak
    assert raw_http(proc.port, http_request("GET", "/v2/health/ready"))[0] == 200


# ------------------------------------------------------------------ config and budget


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "edge.example.org", ""])  # noqa: S104
def test_non_loopback_bind_needs_a_token(host: str) -> None:
    from edgeai.configfile import parse  # noqa: PLC0415

    with pytest.raises(ConfigError) as err:
        parse(ServingConfig, {"host": host}, "agent.toml [serving]")
    text = str(err.value)
    for part in ("agent.toml", "token", "127.0.0.1"):
        assert part in text
    secret = "t"  # noqa: S105  (a test token)
    assert parse(ServingConfig, {"host": host, "token": secret}, "x").token == secret
    assert parse(ServingConfig, {"host": host, "allow_unauthenticated": True}, "x").token is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_bind_may_go_without_a_token(host: str) -> None:
    assert ServingConfig(host=host).token is None


def test_shipped_agent_toml_is_loopback() -> None:
    from edgeai.agent.config import load_agent_config  # noqa: PLC0415

    cfg = load_agent_config(Path(__file__).resolve().parents[2] / "client" / "agent.toml")
    assert cfg.serving.host == "127.0.0.1"


def test_byte_budget_queues_in_order_and_refuses_after_the_deadline() -> None:
    async def scenario() -> list[str]:
        budget = ByteBudget(100)
        order: list[str] = []
        first = await budget.acquire(80, 1)

        async def take(name: str, n: int, timeout: float) -> None:
            try:
                got = await budget.acquire(n, timeout)
            except OverloadedError:
                order.append(f"{name} refused")
                return
            order.append(name)
            budget.release(got)

        waiting = [
            asyncio.create_task(take("a", 50, 5)),
            asyncio.create_task(take("b", 10, 5)),  # fits now, but waits behind a (FIFO)
            asyncio.create_task(take("c", 60, 0.01)),
        ]
        await asyncio.sleep(0.1)  # lets c's deadline pass while 80 bytes are held
        budget.release(first)
        await asyncio.gather(*waiting)
        assert budget.held == 0
        assert await budget.acquire(10**9, 1) == 100  # capped at the limit, runs alone
        return order

    assert asyncio.run(scenario()) == ["c refused", "a", "b"]


def test_summary() -> None:
    """Print the tally (runs last in file order)."""
    counts = f"{TALLY['tried']} / {TALLY['refused']} / {TALLY['survived']}"
    print(f"\nserving attacks tried / refused / survived: {counts}")
    assert TALLY["survived"] == TALLY["tried"]
