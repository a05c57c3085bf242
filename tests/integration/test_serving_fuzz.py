"""Fuzz the live server with random valid and invalid requests over REST and gRPC.

Whatever arrives, the answer is a 2xx or 4xx (OK / INVALID_ARGUMENT / NOT_FOUND /
RESOURCE_EXHAUSTED), never a 5xx or a crash; valid requests get the right predictions;
the server is healthy afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeai.serving._proto import grpc_predict_v2_pb2 as pb
from edgeai.serving.model import ModelHolder, ServedModel
from tests.integration.test_serving import LiveServer, infer_request, logits, reference, served

pytestmark = pytest.mark.integration
__all__ = ["served"]  # the module fixture, shared with test_serving

DATATYPES = ["FP32", "FP64", "FP16", "INT8", "INT32", "INT64", "UINT8", "BOOL", "BYTES", "fp32", ""]
CLIENT_CODES = {"INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED"}
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(width=32),
    st.text(max_size=4),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
names = st.sampled_from(["model", "input", "logits", "", "x"]) | st.text("abc_/.", max_size=6)
shapes = st.lists(st.integers(-3, 6), max_size=5) | st.just([1, 1, 28, 28])
batches = st.integers(1, 4)


@pytest.fixture(scope="module")
def live(served: ServedModel) -> Iterator[LiveServer]:
    with LiveServer(ModelHolder(served), max_request_bytes=2**20, max_queue_size=64) as s:
        yield s


def _valid_doc(x: np.ndarray) -> dict[str, Any]:
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": list(x.shape),
        "data": x.ravel().tolist(),
    }
    return {"inputs": [tensor], "outputs": [{"name": "logits"}]}


@st.composite
def rest_cases(draw: st.DrawFn) -> tuple[str, bytes, np.ndarray | None]:
    """(path, body, input if the request is valid)."""
    kind = draw(st.sampled_from(["valid", "nested", "mutated", "junk", "bytes"]))
    n = draw(batches)
    rng = np.random.default_rng(draw(st.integers(0, 2**32)))
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    path = "/v2/models/model/infer"
    doc = _valid_doc(x)
    if kind == "valid":
        return path, json.dumps(doc).encode(), x
    if kind == "nested":
        doc["inputs"][0]["data"] = x.tolist()
        return path, json.dumps(doc).encode(), x
    if kind == "bytes":
        return path, draw(st.binary(max_size=64)), None
    if kind == "junk":
        return path, json.dumps(draw(json_values)).encode(), None
    tensor = doc["inputs"][0]
    field = draw(st.sampled_from(["name", "datatype", "shape", "data", "model", "version", "drop"]))
    if field == "model":
        path = f"/v2/models/{draw(st.text('abcmodel', min_size=1, max_size=6))}/infer"
    elif field == "version":
        path = f"/v2/models/model/versions/{draw(st.text('0123abc', min_size=1, max_size=6))}/infer"
    elif field == "drop":
        del tensor[draw(st.sampled_from(sorted(tensor)))]
    elif field == "datatype":
        tensor["datatype"] = draw(st.sampled_from(DATATYPES))
    elif field == "shape":
        tensor["shape"] = draw(shapes | json_values)
    elif field == "name":
        tensor["name"] = draw(names | json_values)
    else:
        some = draw(st.lists(scalars, min_size=1, max_size=6))
        tensor["data"] = draw(json_values | st.just((some * 784)[:784]))
    return path, json.dumps(doc).encode(), None


@st.composite
def grpc_cases(draw: st.DrawFn) -> tuple[Any, np.ndarray | None]:
    """(ModelInferRequest, input if the request is valid)."""
    n = draw(batches)
    x = np.full((n, 1, 28, 28), draw(st.floats(0, 1, width=32)), np.float32)
    request = infer_request(x)
    kind = draw(st.sampled_from(["valid", "contents", "mutated", "mutated", "mutated"]))
    if kind == "valid":
        return request, x
    if kind == "contents":
        del request.raw_input_contents[:]
        request.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
        return request, x
    tensor = request.inputs[0]
    field = draw(
        st.sampled_from(["name", "datatype", "shape", "raw", "contents", "model", "extra"])
    )
    if field == "name":
        tensor.name = draw(names)
    elif field == "datatype":
        tensor.datatype = draw(st.sampled_from(DATATYPES))
    elif field == "shape":
        del tensor.shape[:]
        tensor.shape.extend(draw(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5) | shapes))
    elif field == "raw":
        request.raw_input_contents[0] = draw(st.binary(max_size=4 * 784 * 2))
    elif field == "contents":
        tensor.contents.int_contents.extend(draw(st.lists(st.integers(-(2**31), 2**31 - 1))))
    elif field == "model":
        request.model_name = draw(names)
        request.model_version = draw(st.sampled_from(["", "1", "x"]))
    else:
        request.inputs.add(name=draw(names), datatype="FP32", shape=[1])
        request.raw_input_contents.append(draw(st.binary(max_size=8)))
    return request, None


@FUZZ
@given(case=rest_cases())
def test_rest_fuzz_never_5xx(live: LiveServer, served: ServedModel, case: Any) -> None:
    path, body, x = case
    status, reply = live.rest("POST", path, body)
    assert status < 500, reply
    if x is not None:
        assert status == 200, reply
        got = np.asarray(reply["outputs"][0]["data"], np.float32).reshape(len(x), 10)
        np.testing.assert_allclose(got, reference(served, x), rtol=1e-5, atol=1e-5)
    elif status >= 400:
        assert isinstance(reply, dict)
        assert reply["error"]


@FUZZ
@given(case=grpc_cases())
def test_grpc_fuzz_never_internal(live: LiveServer, served: ServedModel, case: Any) -> None:
    request, x = case
    channel, stub = live.stub()
    with channel:
        try:
            response, error = stub.ModelInfer(request, timeout=30), None
        except grpc.RpcError as err:
            response, error = None, err
    if error is not None:
        assert error.code().name in CLIENT_CODES, (error.code(), error.details())
        assert error.details()
        assert x is None
    if x is not None:
        np.testing.assert_allclose(logits(response), reference(served, x), rtol=1e-5, atol=1e-5)


def test_server_is_healthy_after_the_fuzzing(live: LiveServer) -> None:
    # Runs after the fuzz tests in file order, on the same module-scoped server.
    assert live.rest("GET", "/v2/health/live")[0] == 200
    assert live.rest("GET", "/v2/health/ready")[0] == 200
    status, metrics = live.rest("GET", "/metrics")
    assert status == 200
    assert 'code="500"' not in metrics
    channel, stub = live.stub()
    with channel:
        assert stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
        response = stub.ModelInfer(infer_request(np.zeros((1, 1, 28, 28), np.float32)), timeout=10)
    assert logits(response).shape == (1, 10)
