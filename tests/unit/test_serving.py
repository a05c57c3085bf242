"""The serving protocol core, model holder and metrics, with an in-memory session."""

from __future__ import annotations

import contextlib
import json
import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from edgeai.serving.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    ServingError,
)
from edgeai.serving.metrics import ServingMetrics
from edgeai.serving.model import ModelHolder, ServedModel, served_from_session
from edgeai.serving.protocol import (
    array_from_json,
    array_from_raw,
    array_from_values,
    check_tensor,
    parse_rest_infer,
    requested_outputs,
    resolve_model,
    rest_response,
)


class FakeSession:
    """In-memory stand-in for an ORT session: a (-1, 3) float and a (-1, 2) int64 input."""

    def get_inputs(self) -> list[Any]:
        return [
            SimpleNamespace(name="a", type="tensor(float)", shape=["batch", 3]),
            SimpleNamespace(name="b", type="tensor(int64)", shape=[None, 2]),
        ]

    def get_outputs(self) -> list[Any]:
        return [
            SimpleNamespace(name="total", type="tensor(float)", shape=["batch"]),
            SimpleNamespace(name="double", type="tensor(float)", shape=["batch", 3]),
        ]

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        a, b = feeds["a"], feeds["b"]
        total = a.sum(axis=1) + b.sum(axis=1).astype(np.float32)
        return [total, 2 * a][: len(names)]


def fake_model(version: str = "1") -> ServedModel:
    return served_from_session(FakeSession(), "adder", version, "CPUExecutionProvider")


def body(**changes: Any) -> bytes:
    doc: dict[str, Any] = {
        "id": "r1",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
            {"name": "b", "datatype": "INT64", "shape": [2, 2], "data": [[1, 1], [2, 2]]},
        ],
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def test_specs_come_from_the_session_with_minus_one_for_free_dims() -> None:
    model = fake_model()
    assert [(s.name, s.datatype, s.shape) for s in model.inputs] == [
        ("a", "FP32", (-1, 3)),
        ("b", "INT64", (-1, 2)),
    ]
    assert model.batchable
    assert model.output_names == ("total", "double")


def test_rest_request_round_trip() -> None:
    model = fake_model()
    request = parse_rest_infer(model, body(outputs=[{"name": "total"}]))
    assert request.rows == 2
    assert request.batch_key == ((3,), (2,))
    assert request.inputs["b"].dtype == np.int64
    outputs = dict(zip(model.output_names, model.run(request.inputs), strict=True))
    doc = json.loads(rest_response(request, outputs))
    assert doc == {
        "model_name": "adder",
        "model_version": "1",
        "id": "r1",
        "outputs": [{"name": "total", "datatype": "FP32", "shape": [2], "data": [8.0, 19.0]}],
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"inputs": []}', "non-empty list"),
        (body(id=3), "'id' must be a string"),
        (body(outputs=[{"name": "nope"}]), "unknown output 'nope'"),
        (body(outputs={"name": "total"}), "'outputs' must be a list"),
        (body(inputs=[{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]),
         "missing input(s) ['b']"),
        (body(inputs=[{"name": "a", "datatype": "FP32", "shape": [1, 3]}]), "has no 'data'"),
        (body(inputs=[{"name": "a", "datatype": "FP32", "shape": "1,3", "data": []}]),
         "'shape' must be a list"),
    ],
)  # fmt: skip
def test_malformed_rest_requests_are_invalid_with_a_message(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_rest_infer(fake_model(), raw)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "message"),
    [
        ("c", "FP32", [1, 3], "unknown input 'c'"),
        ("a", "FP64", [1, 3], "must be FP32"),
        ("a", "FP32", [1, 3, 1], "rank 2"),
        ("a", "FP32", [1, 4], "must have shape [-1, 3]"),
        ("a", "FP32", [0, 3], "positive integers"),
        ("a", "FP32", [-1, 3], "positive integers"),
        ("a", "FP32", [True, 3], "positive integers"),
        ("a", "FP32", [1.0, 3], "positive integers"),
    ],
)
def test_check_tensor_names_the_problem(
    name: str, datatype: str, shape: list[Any], message: str
) -> None:
    with pytest.raises(InvalidRequestError) as err:
        check_tensor(fake_model(), name, datatype, shape)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("spec", "data", "message"),
    [
        ("a", [1, 2, None], "must be numbers"),
        ("a", [1, 2, "3"], "must be numbers"),
        ("a", [[1, 2], [3]], "not a tensor"),
        ("a", [[1, 2, 3]], None),  # nested as the shape: fine
        ("a", [[1], [2], [3]], "nested data has shape [3, 1]"),
        ("a", [1, 2], "needs 3 elements, got 2"),
        ("b", [1.5, 2, 3], "must be integers"),
        ("b", [2**63, 1, 1], "must be integers"),  # numpy reads it as float64
        ("b", [2**70, 1, 1], "must be integers"),
        ("a", {"x": 1}, "must be a list"),
    ],
)
def test_json_data_is_converted_strictly(spec: str, data: Any, message: str | None) -> None:
    tensor = fake_model().input_index[spec]
    if message is None:
        assert array_from_json(tensor, [1, 3], data).shape == (1, 3)
        return
    with pytest.raises(InvalidRequestError, match=message.replace("[", r"\[")):
        array_from_json(tensor, [1, 3], data)


def test_int8_range_and_bool_kind_are_checked() -> None:
    i8 = SimpleNamespace(name="q", type="tensor(int8)", shape=[2])
    bo = SimpleNamespace(name="m", type="tensor(bool)", shape=[2])
    session = SimpleNamespace(get_inputs=lambda: [i8, bo], get_outputs=lambda: [])
    model = served_from_session(session, "m", "1", "CPU")
    q, m = model.input_index["q"], model.input_index["m"]
    assert array_from_values(q, [2], [-128, 127]).tolist() == [-128, 127]
    with pytest.raises(InvalidRequestError, match="out of range for INT8"):
        array_from_values(q, [2], [0, 128])
    assert array_from_json(m, [2], [True, False]).dtype == np.bool_
    with pytest.raises(InvalidRequestError, match="must be booleans"):
        array_from_json(m, [2], [1, 0])


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 5), data=st.data())
def test_raw_bytes_round_trip_and_wrong_lengths_fail(rows: int, data: st.DataObject) -> None:
    spec = fake_model().input_index["b"]
    values = data.draw(
        st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2 * rows, max_size=2 * rows)
    )
    raw = np.asarray(values, dtype="<i8").tobytes()
    np.testing.assert_array_equal(array_from_raw(spec, [rows, 2], raw).ravel(), values)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(InvalidRequestError, match=f"needs {len(raw)} bytes, got {cut}"):
        array_from_raw(spec, [rows, 2], raw[:cut])


@settings(max_examples=300, deadline=None)
@given(doc=st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.sampled_from(
        ["inputs", "outputs", "name", "datatype", "shape", "data", "id", "a", "b"]), c, max_size=4),
    max_leaves=15,
))  # fmt: skip
def test_any_json_parses_or_fails_as_invalid_request(doc: Any) -> None:
    # Anything but InvalidRequestError (KeyError, TypeError, ...) would be a 500: fail on it.
    with contextlib.suppress(InvalidRequestError):
        parse_rest_infer(fake_model(), json.dumps(doc).encode())


def test_model_resolution_and_output_selection() -> None:
    model = fake_model("7")
    assert resolve_model(model, "adder", "") is model
    assert resolve_model(model, "adder", "7") is model
    with pytest.raises(ModelNotFoundError, match="unknown model 'x'; this server serves 'adder'"):
        resolve_model(model, "x", "")
    with pytest.raises(ModelNotFoundError, match="unknown version '8'"):
        resolve_model(model, "adder", "8")
    with pytest.raises(ModelNotReadyError):
        resolve_model(None, "adder", "")
    assert requested_outputs(model, []) == ("total", "double")
    assert requested_outputs(model, ["double", "double"]) == ("double",)


def test_error_classes_map_to_http_and_grpc() -> None:
    pairs = {(c.http_status, c.grpc_code) for c in ServingError.__subclasses__()}
    assert (400, "INVALID_ARGUMENT") in pairs
    assert (404, "NOT_FOUND") in pairs
    assert (413, "RESOURCE_EXHAUSTED") in pairs
    assert (401, "UNAUTHENTICATED") in pairs
    assert issubclass(ModelNotFoundError, LookupError)


def test_holder_swaps_atomically_under_threads() -> None:
    first, second = fake_model("1"), fake_model("2")
    holder = ModelHolder(first)
    seen: set[str] = set()

    def read() -> None:
        for _ in range(2000):
            model = holder.current()
            assert model is not None
            seen.add(model.version)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for t in readers:
        t.start()
    assert holder.swap(second) is first
    for t in readers:
        t.join()
    assert seen <= {"1", "2"}
    assert holder.current() is second
    assert holder.swap(None) is second
    assert holder.current() is None


def test_metrics_stats_and_exposition() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry, lambda: 3, window=4)
    assert metrics.stats()["latency_p50_ms"] is None
    metrics.model(fake_model("9"))
    for ms in (1, 2, 3, 4, 100):
        metrics.request("grpc", "infer", "OK", ms / 1e3)
    metrics.request("rest", "ready", "200", None)
    metrics.batch(rows=6, requests=3)
    stats = metrics.stats()
    assert stats["request_count"] == 6
    assert stats["inference_count"] == 6
    assert stats["execution_count"] == 1
    assert stats["latency_window"] == 4  # the oldest (1 ms) fell out of the window
    assert stats["latency_p50_ms"] == pytest.approx(3.5)
    assert stats["queue_depth"] == 3
    assert stats["model_version"] == "9"
    text = generate_latest(registry).decode()
    assert (
        'edgeai_serving_model_info{name="adder",provider="CPUExecutionProvider",version="9"} 1.0'
        in text
    )
    assert "edgeai_serving_queue_depth 3.0" in text
    assert 'edgeai_serving_requests_total{code="OK",endpoint="infer",protocol="grpc"} 5.0' in text
