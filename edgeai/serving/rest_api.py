"""KServe v2 REST front end on aiohttp (inference_rest.md of the Open Inference Protocol).

Health endpoints stay open when a token is configured (orchestrator probes carry no
credentials); metadata, inference and ``/metrics`` need ``Authorization: Bearer <token>``.
Errors are ``{"error": "<message>"}`` with the status of the typed error. A bad request
is a 4xx and at most one log line (none for the ones the protocol core refuses).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgeai.serving.core import EXTENSIONS, SERVER_NAME, SERVER_VERSION, ServingCore, one_line
from edgeai.serving.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    ServingError,
    client_message,
)
from edgeai.serving.protocol import model_metadata_json, parse_rest_infer, rest_response

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.Response]]
_JSON = "application/json"


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type=_JSON)


def _error(exc: ServingError) -> web.Response:
    response = _json({"error": client_message(exc)}, exc.http_status)
    if isinstance(exc, PayloadTooLargeError | RequestTimeoutError | OverloadedError):
        # The rest of the body may never come, or be huge: close the connection after
        # the response rather than keep it alive.
        response.force_close()
    return response


class OneLineFilter(logging.Filter):
    """Turn a record with a traceback into one line: the message, the exception's type and text.

    aiohttp logs every malformed HTTP message ("Error handling request") with a traceback,
    and those requests are free to send: a dozen lines each filled our logs. Newlines in
    the text are folded so what a client sent cannot forge log lines either.
    """

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if isinstance(exc, web.RequestPayloadError):
                # A body that cannot be decoded (bad gzip, broken chunks): the handler
                # answered 400 already, and aiohttp trips over it again when it drains
                # the rest of the body after the response. The client's fault, not news.
                return False
            message = " ".join(record.getMessage().split())
            record.msg = f"{message}: {type(exc).__name__}: {one_line(exc)}"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
        return True


def http_logger() -> logging.Logger:
    """The logger aiohttp's protocol handler reports malformed requests to (one line each)."""
    logger = logging.getLogger("edgeai.serving.http")
    if not any(isinstance(f, OneLineFilter) for f in logger.filters):
        logger.addFilter(OneLineFilter())
    return logger


class RestApi:
    """The aiohttp application over a :class:`ServingCore`.

    Parameters
    ----------
    core
        What both front ends share.
    max_request_bytes
        Largest body accepted (413 beyond it), after any ``Content-Encoding`` is undone.
    body_timeout_s
        How long a request may wait for its bytes of the in-flight budget, and then take
        to send its body (408 beyond it).
    """

    def __init__(
        self, core: ServingCore, max_request_bytes: int, body_timeout_s: float = 30.0
    ) -> None:
        self._core = core
        self._max_bytes = max_request_bytes
        self._body_timeout = body_timeout_s
        # client_max_size makes request.read() refuse a larger body with 413 by itself.
        self.app = web.Application(client_max_size=max_request_bytes)
        add = self.app.router.add_route
        add("GET", "/v2/health/live", self._wrap("live", self._live, auth=False))
        add("GET", "/v2/health/ready", self._wrap("ready", self._ready, auth=False))
        model_ready = self._wrap("model_ready", self._model_ready, auth=False)
        add("GET", "/v2/models/{model}/ready", model_ready)
        add("GET", "/v2/models/{model}/versions/{version}/ready", model_ready)
        add("GET", "/v2", self._wrap("server_metadata", self._server_metadata))
        metadata = self._wrap("model_metadata", self._model_metadata)
        add("GET", "/v2/models/{model}", metadata)
        add("GET", "/v2/models/{model}/versions/{version}", metadata)
        infer = self._wrap("infer", self._infer)
        add("POST", "/v2/models/{model}/infer", infer)
        add("POST", "/v2/models/{model}/versions/{version}/infer", infer)
        add("GET", "/metrics", self._wrap("metrics", self._metrics))

    def _wrap(self, endpoint: str, handler: Handler, *, auth: bool = True) -> Handler:
        core, timed = self._core, endpoint == "infer"
        check = auth and core.auth_required

        async def wrapped(request: web.Request) -> web.Response:
            start = time.perf_counter()
            try:
                if check:
                    core.authorize(request.headers.get("Authorization"))
                response = await handler(request)
            except ServingError as exc:
                response = _error(exc)
            except Exception as exc:  # a bug of ours: answer 500 and keep serving
                core.report_bug(f"REST {endpoint}", exc)
                response = _json({"error": "internal server error"}, 500)
            elapsed = time.perf_counter() - start if timed else None
            core.metrics.request("rest", endpoint, str(response.status), elapsed)
            return response

        return wrapped

    async def _live(self, _: web.Request) -> web.Response:
        return _json({"live": True})

    async def _ready(self, _: web.Request) -> web.Response:
        # inference_rest.md: 200 means true, a 4xx status means false.
        ready = self._core.ready()
        return _json({"ready": ready}, 200 if ready else 400)

    async def _model_ready(self, request: web.Request) -> web.Response:
        name, version = request.match_info["model"], request.match_info.get("version", "")
        try:
            ready = self._core.model_ready(name, version)
        except ModelNotReadyError:
            ready = False
        return _json({"name": name, "ready": ready}, 200 if ready else 400)

    async def _server_metadata(self, _: web.Request) -> web.Response:
        doc = {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": list(EXTENSIONS)}
        return _json(doc)

    async def _model_metadata(self, request: web.Request) -> web.Response:
        model = self._core.model(request.match_info["model"], request.match_info.get("version", ""))
        body = self._core.cached("rest_metadata", model, model_metadata_json)
        return web.Response(body=body, content_type=_JSON)

    async def _infer(self, request: web.Request) -> web.Response:
        model = self._core.model(request.match_info["model"], request.match_info.get("version", ""))
        if "Inference-Header-Content-Length" in request.headers:
            raise InvalidRequestError(
                "the binary data extension is not supported: send tensors as JSON 'data' "
                "(tritonclient.http: binary_data=False), or use gRPC raw_input_contents"
            )
        declared = request.content_length
        if (declared or 0) > self._max_bytes:
            raise PayloadTooLargeError(
                f"request body of {declared} bytes is over the {self._max_bytes}-byte limit"
            )
        # What the body will cost once read: its declared length, unless it is chunked or
        # compressed (a small gzip body can inflate to the limit).
        plain = request.headers.get("Content-Encoding", "identity").lower() == "identity"
        claim = declared if declared is not None and plain else self._max_bytes
        async with self._core.budget.hold(claim, self._body_timeout):
            body = await self._read(request)
            parsed = parse_rest_infer(model, body)
            outputs = await self._core.infer(parsed)
            return web.Response(body=rest_response(parsed, outputs), content_type=_JSON)

    async def _read(self, request: web.Request) -> bytes:
        try:
            async with asyncio.timeout(self._body_timeout):
                body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:  # chunked or compressed bodies
            raise PayloadTooLargeError(
                f"request body is over the {self._max_bytes}-byte limit"
            ) from exc
        except TimeoutError as exc:
            raise RequestTimeoutError(
                f"the request body did not arrive within {self._body_timeout:g} s"
            ) from exc
        except web.RequestPayloadError as exc:  # bad gzip/deflate, broken chunked framing
            cause: Any = exc.__cause__ or exc
            raise InvalidRequestError(
                f"cannot read the request body: {one_line(cause, 200)}"
            ) from exc
        if not body:
            raise InvalidRequestError("the request body is empty; send a JSON inference request")
        return body

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._core.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
