"""KServe v2 gRPC front end on ``grpc.aio`` (inference_grpc.md of the Open Inference Protocol).

Outputs always travel in ``raw_output_contents`` (as Triton does); inputs may come as typed
``contents`` or ``raw_input_contents``. Health RPCs stay open when a token is configured;
the others need ``authorization: Bearer <token>`` metadata. Messages over the size limit
are refused by gRPC itself with RESOURCE_EXHAUSTED (``grpc.max_receive_message_length``).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import grpc

from edgeai.serving._proto import grpc_predict_v2_pb2 as pb
from edgeai.serving._proto import grpc_predict_v2_pb2_grpc as pb_grpc
from edgeai.serving.core import EXTENSIONS, SERVER_NAME, SERVER_VERSION, ServingCore
from edgeai.serving.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    ServingError,
    client_message,
)
from edgeai.serving.model import ServedModel
from edgeai.serving.protocol import (
    CONTENTS_FIELD,
    Array,
    InferRequest,
    array_from_raw,
    array_from_values,
    check_tensor,
    finish,
)

_LITTLE = sys.byteorder == "little"


def parse_grpc_infer(model: ServedModel, request: Any) -> InferRequest:
    """Turn a ``ModelInferRequest`` into a validated :class:`InferRequest`."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidRequestError(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "give one per input, in order, or use 'contents' for all of them"
        )
    arrays: dict[str, Array] = {}
    for index, tensor in enumerate(request.inputs):
        shape = list(tensor.shape)
        spec = check_tensor(model, tensor.name, tensor.datatype, shape)
        if tensor.name in arrays:
            raise InvalidRequestError(f"input {tensor.name!r} given twice")
        if raw:
            if tensor.HasField("contents"):
                raise InvalidRequestError(
                    f"input {tensor.name!r} has both 'contents' and raw_input_contents"
                )
            arrays[tensor.name] = array_from_raw(spec, shape, raw[index])
            continue
        field = CONTENTS_FIELD.get(spec.datatype)
        if field is None:
            raise InvalidRequestError(
                f"input {tensor.name!r}: {spec.datatype} data must come in raw_input_contents"
            )
        arrays[tensor.name] = array_from_values(spec, shape, getattr(tensor.contents, field))
    return finish(model, request.id, arrays, [o.name for o in request.outputs])


def _raw(arr: Array) -> bytes:
    # tobytes() always yields row-major bytes (it copies views in C order), so only the
    # byte order may need converting; ORT outputs are native, little-endian on our hosts.
    if arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not _LITTLE):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def grpc_response(request: InferRequest, outputs: dict[str, Array]) -> Any:
    """Build a ``ModelInferResponse`` with the requested outputs as raw little-endian bytes."""
    model = request.model
    specs = model.output_index
    tensor = pb.ModelInferResponse.InferOutputTensor
    names = request.outputs
    return pb.ModelInferResponse(
        model_name=model.name,
        model_version=model.version,
        id=request.id,
        outputs=[tensor(name=n, datatype=specs[n].datatype, shape=outputs[n].shape) for n in names],
        raw_output_contents=[_raw(outputs[n]) for n in names],
    )


def _metadata(model: ServedModel) -> Any:
    def tensor(s: Any) -> Any:
        return pb.ModelMetadataResponse.TensorMetadata(
            name=s.name, datatype=s.datatype, shape=s.shape
        )

    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[model.version],
        platform=model.platform,
        inputs=[tensor(s) for s in model.inputs],
        outputs=[tensor(s) for s in model.outputs],
    )


class GrpcApi(pb_grpc.GRPCInferenceServiceServicer):
    """The ``inference.GRPCInferenceService`` servicer over a :class:`ServingCore`."""

    def __init__(self, core: ServingCore, budget_timeout_s: float = 30.0) -> None:
        self._core = core
        self._budget_timeout = budget_timeout_s
        self._server_metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=list(EXTENSIONS)
        )

    def _authorize(self, context: Any) -> None:
        if not self._core.auth_required:
            return
        header = next(
            (v for k, v in context.invocation_metadata() or () if k == "authorization"), None
        )
        self._core.authorize(header if isinstance(header, str) else None)

    async def _fail(self, context: Any, endpoint: str, exc: ServingError, start: float) -> None:
        elapsed = time.perf_counter() - start if endpoint == "infer" else None
        self._core.metrics.request("grpc", endpoint, exc.grpc_code, elapsed)
        await context.abort(getattr(grpc.StatusCode, exc.grpc_code), client_message(exc))

    async def ServerLive(self, _request: Any, _context: Any) -> Any:  # noqa: N802  (gRPC names)
        """Whether the server is live."""
        self._core.metrics.request("grpc", "live", "OK", None)
        return pb.ServerLiveResponse(live=self._core.live())

    async def ServerReady(self, _request: Any, _context: Any) -> Any:  # noqa: N802
        """Whether the server is ready (a model loaded, not draining)."""
        self._core.metrics.request("grpc", "ready", "OK", None)
        return pb.ServerReadyResponse(ready=self._core.ready())

    async def ModelReady(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Whether the named model (and version) is ready; NOT_FOUND when unknown."""
        start = time.perf_counter()
        try:
            ready = self._core.model_ready(request.name, request.version)
        except ModelNotReadyError:
            ready = False
        except ServingError as exc:
            await self._fail(context, "model_ready", exc, start)
        self._core.metrics.request("grpc", "model_ready", "OK", None)
        return pb.ModelReadyResponse(ready=ready)

    async def ServerMetadata(self, _request: Any, context: Any) -> Any:  # noqa: N802
        """Server name, version and extensions."""
        start = time.perf_counter()
        try:
            self._authorize(context)
        except ServingError as exc:
            await self._fail(context, "server_metadata", exc, start)
        self._core.metrics.request("grpc", "server_metadata", "OK", None)
        return self._server_metadata

    async def ModelMetadata(self, request: Any, context: Any) -> Any:  # noqa: N802
        """The model's name, versions, platform and tensor metadata."""
        start = time.perf_counter()
        try:
            self._authorize(context)
            model = self._core.model(request.name, request.version)
        except ServingError as exc:
            await self._fail(context, "model_metadata", exc, start)
        self._core.metrics.request("grpc", "model_metadata", "OK", None)
        return self._core.cached("grpc_metadata", model, _metadata)

    async def ModelInfer(self, request: Any, context: Any) -> Any:  # noqa: N802
        """Run one inference request (micro-batched with concurrent ones)."""
        start = time.perf_counter()
        core = self._core
        try:
            self._authorize(context)
            model = core.model(request.model_name, request.model_version)
            # gRPC has read the message already; holding its size in the budget still
            # bounds the tensors decoded from it and queued (ByteSize is computed in C).
            async with core.budget.hold(request.ByteSize(), self._budget_timeout):
                parsed = parse_grpc_infer(model, request)
                outputs = await core.infer(parsed)
                response = grpc_response(parsed, outputs)
        except ServingError as exc:
            await self._fail(context, "infer", exc, start)
        except Exception as exc:  # a bug of ours: INTERNAL, and keep serving
            core.report_bug("gRPC ModelInfer", exc)
            await self._fail(context, "infer", ServingError("internal error"), start)
        core.metrics.request("grpc", "infer", "OK", time.perf_counter() - start)
        return response


def add_to_server(server: Any, core: ServingCore, budget_timeout_s: float = 30.0) -> None:
    """Register the KServe v2 service on a ``grpc.aio`` server."""
    servicer = GrpcApi(core, budget_timeout_s)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
