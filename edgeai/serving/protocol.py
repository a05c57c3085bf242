"""The KServe v2 protocol core, shared by the REST and gRPC front ends; no I/O.

It checks a request against the model's metadata and turns its tensors into numpy arrays
(JSON ``data``, gRPC typed ``contents`` or ``raw_input_contents``), and turns outputs back.
Every problem becomes a typed error from :mod:`edgeai.serving.errors`; nothing a client
sends should reach ONNX Runtime unchecked. Spec: https://github.com/kserve/open-inference-protocol
(specification/protocol/inference_rest.md and inference_grpc.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeai.serving.errors import InvalidRequestError, ModelNotFoundError, ModelNotReadyError
from edgeai.serving.model import V2_TO_NUMPY, ServedModel, TensorSpec

Array = np.ndarray[Any, Any]
# The typed InferTensorContents field that carries each datatype (inference_grpc.md).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_MAX_DIM = 2**31


@dataclass(frozen=True)
class InferRequest:
    """A validated request: the model it runs on, arrays by input name, outputs wanted."""

    model: ServedModel
    id: str
    inputs: dict[str, Array]
    outputs: tuple[str, ...]

    @property
    def rows(self) -> int:
        """Batch rows this request adds; 0 when it cannot be merged with others."""
        if not self.model.batchable:
            return 0
        firsts = {a.shape[0] for a in self.inputs.values()}
        return firsts.pop() if len(firsts) == 1 else 0

    @property
    def batch_key(self) -> tuple[tuple[int, ...], ...]:
        """Requests with equal keys (non-batch dims of every input) can be concatenated."""
        return tuple(self.inputs[s.name].shape[1:] for s in self.model.inputs)


def resolve_model(current: ServedModel | None, name: str, version: str) -> ServedModel:
    """Return ``current`` if it is the model (and version, when given) a request names."""
    if current is None:
        raise ModelNotReadyError("no model is loaded yet")
    if name != current.name:
        raise ModelNotFoundError(f"unknown model {name!r}; this server serves {current.name!r}")
    if version and version != current.version:
        raise ModelNotFoundError(
            f"unknown version {version!r} of model {name!r}; serving version {current.version!r}"
        )
    return current


def check_tensor(model: ServedModel, name: str, datatype: str, shape: Sequence[Any]) -> TensorSpec:
    """Check an input's declared name, datatype and shape against the model; return its spec."""
    spec = model.input_index.get(name)
    if spec is None:
        known = ", ".join(repr(s.name) for s in model.inputs)
        raise InvalidRequestError(f"unknown input {name!r}; the model's inputs are {known}")
    if datatype != spec.datatype:
        raise InvalidRequestError(f"input {name!r} must be {spec.datatype}, got {datatype!r}")
    if spec.dtype is None:
        raise InvalidRequestError(f"input {name!r}: {spec.datatype} tensors are not supported")
    if not isinstance(shape, Sequence) or len(shape) != len(spec.shape):
        raise InvalidRequestError(
            f"input {name!r} must have rank {len(spec.shape)} (shape {list(spec.shape)}), "
            f"got shape {shape!r}"
        )
    for axis, (got, want) in enumerate(zip(shape, spec.shape, strict=True)):
        if not isinstance(got, int) or isinstance(got, bool) or not 1 <= got < _MAX_DIM:
            raise InvalidRequestError(
                f"input {name!r}: dimension {axis} is {got!r}; dimensions are positive integers"
            )
        if want not in (-1, got):
            raise InvalidRequestError(
                f"input {name!r} must have shape {list(spec.shape)} (-1 = any), got {list(shape)}"
            )
    return spec


def _size_error(name: str, shape: Sequence[int], got: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} elements, got {got}"
    )


_KIND_NAMES = {"b": "booleans", "i": "integers", "u": "integers", "f": "numbers"}
# The numpy kinds each datatype kind accepts. JSON has one number type, so integers are
# numbers for FP*; but floats are not integers (2.0 for INT32 is refused, not truncated)
# and booleans are neither (numpy would read true as 1). KServe v2 types each tensor's
# data by its datatype ("Tensor Data", inference_rest.md), so a value of another kind is
# the client's error, not something to coerce.
_ALLOWED_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}


def _has_bool(values: Any) -> bool:
    """Whether nested lists hold a ``bool`` anywhere (numpy folds them into ints/floats)."""
    stack = [values]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool):
            return True
    return False


def _numeric(values: Any, spec: TensorSpec, *, maybe_bools: bool = True) -> Array:
    """Convert parsed JSON numbers or protobuf repeated values to ``spec``'s dtype, strictly.

    numpy would quietly turn ``None`` into NaN, parse strings, read booleans as 1 and wrap
    ints that overflow, so the values are read with their own type first and cast only
    when it is lossless in kind (ints into floats yes, floats into ints no, booleans only
    into BOOL) and in range. ``maybe_bools`` False skips the scan for booleans mixed into
    numbers (the caller knows there are none: typed gRPC contents, or JSON without a
    ``true``/``false`` token).
    """
    dtype = V2_TO_NUMPY[spec.datatype]
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # ragged, huge ints
        raise InvalidRequestError(f"input {spec.name!r}: data is not a tensor: {exc}") from exc
    kind = arr.dtype.kind
    want = _KIND_NAMES[dtype.kind]
    if arr.size and kind not in _ALLOWED_KINDS[dtype.kind]:
        got = _KIND_NAMES.get(kind, "other values (strings, null, objects or huge integers)")
        raise InvalidRequestError(
            f"input {spec.name!r}: {spec.datatype} data must be {want}, got {got}"
        )
    if dtype.kind != "b" and arr.size and maybe_bools and _has_bool(values):
        raise InvalidRequestError(
            f"input {spec.name!r}: {spec.datatype} data must be {want}, got booleans"
        )
    if dtype.kind in "iu" and arr.size:
        info = np.iinfo(dtype)
        if int(arr.min()) < info.min or int(arr.max()) > info.max:
            raise InvalidRequestError(
                f"input {spec.name!r}: values out of range for {spec.datatype}"
            )
    with np.errstate(over="ignore"):  # overflow to inf is checked just below
        out = arr.astype(dtype, copy=False)
    # Only finite values that overflowed the datatype are refused; NaN and infinities the
    # client sent on purpose pass (docs/SERVING.md, "Non-finite numbers"). The cheap check
    # goes first: nearly every request is all finite.
    overflow = dtype.kind == "f" and arr.size and not np.isfinite(out).all()
    if overflow and (np.isinf(out) & np.isfinite(arr)).any():
        raise InvalidRequestError(f"input {spec.name!r}: values out of range for {spec.datatype}")
    return out


def array_from_json(
    spec: TensorSpec, shape: Sequence[int], data: Any, *, maybe_bools: bool = True
) -> Array:
    """Build an input from REST ``data``: a flat row-major list or lists nested as ``shape``.

    ``maybe_bools`` False: the body has no ``true``/``false`` token, so skip the scan.
    """
    if not isinstance(data, list):
        raise InvalidRequestError(f"input {spec.name!r}: 'data' must be a list")
    arr = _numeric(data, spec, maybe_bools=maybe_bools)
    if arr.ndim > 1 and arr.shape != tuple(shape):
        raise InvalidRequestError(
            f"input {spec.name!r}: nested data has shape {list(arr.shape)}, "
            f"the tensor declares {list(shape)}"
        )
    if arr.size != math.prod(shape):
        raise _size_error(spec.name, shape, arr.size)
    return arr.reshape(shape)


def array_from_values(spec: TensorSpec, shape: Sequence[int], values: Sequence[Any]) -> Array:
    """Build an input from the gRPC typed ``contents`` field of its datatype."""
    if len(values) != math.prod(shape):
        raise _size_error(spec.name, shape, len(values))
    # Typed contents: the field already fixes the kind (bool_contents only for BOOL).
    return _numeric(values, spec, maybe_bools=False).reshape(shape)


def array_from_raw(spec: TensorSpec, shape: Sequence[int], raw: bytes) -> Array:
    """Build an input from little-endian row-major bytes (gRPC ``raw_input_contents``)."""
    dtype = V2_TO_NUMPY[spec.datatype].newbyteorder("<")
    want = math.prod(shape) * dtype.itemsize
    if len(raw) != want:
        raise InvalidRequestError(
            f"input {spec.name!r}: shape {list(shape)} of {spec.datatype} needs {want} bytes, "
            f"got {len(raw)}"
        )
    # No copy: ORT reads the buffer (it does not write inputs), a batch concatenates anyway.
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def requested_outputs(model: ServedModel, names: Sequence[str]) -> tuple[str, ...]:
    """Check requested output names; none requested means every output."""
    if not names:
        return model.output_names
    for name in names:
        if name not in model.output_names:
            known = ", ".join(repr(n) for n in model.output_names)
            raise InvalidRequestError(f"unknown output {name!r}; the model's outputs are {known}")
    return tuple(dict.fromkeys(names))


def finish(
    model: ServedModel, request_id: str, arrays: dict[str, Array], outputs: Sequence[str]
) -> InferRequest:
    """Check that every input came exactly once and build the request."""
    missing = [s.name for s in model.inputs if s.name not in arrays]
    if missing:
        raise InvalidRequestError(f"missing input(s) {missing}; the model needs all of them")
    return InferRequest(model, request_id, arrays, requested_outputs(model, outputs))


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{what} must be a JSON object")
    return value


def parse_rest_infer(model: ServedModel, body: bytes) -> InferRequest:
    """Parse a REST ``$inference_request`` JSON body for ``model``."""
    try:
        # RFC 8259 §8.1: JSON between systems is UTF-8 (json.loads would also guess
        # UTF-16/32, which the boolean check below could not see through).
        text = body.decode("utf-8")
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # "[[[[..." deeper than the parser's stack
        raise InvalidRequestError(
            "request body is not valid JSON: nested too deeply (tensors need a few levels)"
        ) from exc
    # Booleans hidden among numbers need a scan of the data; a body without the tokens
    # (nearly every request) cannot hold any.
    maybe_bools = "true" in text or "false" in text
    doc = _obj(doc, "the request body")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidRequestError("'inputs' must be a non-empty list")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidRequestError("'id' must be a string")
    arrays: dict[str, Array] = {}
    for item in inputs:
        tensor = _obj(item, "each entry of 'inputs'")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidRequestError("each input needs a string 'name' and 'datatype'")
        if not isinstance(shape, list):
            raise InvalidRequestError(f"input {name!r}: 'shape' must be a list of integers")
        if name in arrays:
            raise InvalidRequestError(f"input {name!r} given twice")
        spec = check_tensor(model, name, datatype, shape)
        if "data" not in tensor:
            raise InvalidRequestError(
                f"input {name!r} has no 'data' (the binary extension is not supported)"
            )
        arrays[name] = array_from_json(spec, shape, tensor["data"], maybe_bools=maybe_bools)
    wanted = doc.get("outputs") or []
    if not isinstance(wanted, list):
        raise InvalidRequestError("'outputs' must be a list")
    names = []
    for item in wanted:
        out = _obj(item, "each entry of 'outputs'")
        if not isinstance(out.get("name"), str):
            raise InvalidRequestError("each requested output needs a string 'name'")
        names.append(out["name"])
    return finish(model, request_id, arrays, names)


# Non-finite floats as the proto3 JSON mapping writes them: JSON has no NaN or infinity
# (RFC 8259 §6), and strict parsers (JavaScript, Go, Rust) reject Python's bare tokens.
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def json_values(arr: Array) -> list[Any]:
    """A tensor as a flat JSON-ready list: NaN and infinities become strings."""
    flat: list[Any] = arr.ravel().tolist()
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        flat = [v if math.isfinite(v) else _NON_FINITE[repr(v)] for v in flat]
    return flat


def rest_response(request: InferRequest, outputs: dict[str, Array]) -> bytes:
    """Encode a REST ``$inference_response`` with the requested outputs as flat JSON data.

    Always strict JSON: non-finite values are the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` (:func:`json_values`).
    """
    model = request.model
    specs = {s.name: s for s in model.outputs}
    doc: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "outputs": [
            {
                "name": name,
                "datatype": specs[name].datatype,
                "shape": list(outputs[name].shape),
                "data": json_values(outputs[name]),
            }
            for name in request.outputs
        ],
    }
    if request.id:
        doc["id"] = request.id
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def model_metadata_json(model: ServedModel) -> bytes:
    """The REST ``$metadata_model_response`` (computed once per model by the front end)."""
    doc = {
        "name": model.name,
        "versions": [model.version],
        "platform": model.platform,
        "inputs": [s.as_json() for s in model.inputs],
        "outputs": [s.as_json() for s in model.outputs],
    }
    return json.dumps(doc).encode()
