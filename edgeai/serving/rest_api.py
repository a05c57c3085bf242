"""KServe v2 REST front end on aiohttp (inference_rest.md of the Open Inference Protocol).

Health endpoints stay open when a token is configured (orchestrator probes carry no
credentials); metadata, inference and ``/metrics`` need ``Authorization: Bearer <token>``.
Errors are ``{"error": "<message>"}`` with the status of the typed error.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from edgeai.serving.core import EXTENSIONS, SERVER_NAME, SERVER_VERSION, ServingCore
from edgeai.serving.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    PayloadTooLargeError,
    ServingError,
)
from edgeai.serving.protocol import model_metadata_json, parse_rest_infer, rest_response

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.Response]]
_JSON = "application/json"


def _json(doc: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(doc).encode(), status=status, content_type=_JSON)


def _error(exc: ServingError) -> web.Response:
    return _json({"error": str(exc)}, exc.http_status)


class RestApi:
    """The aiohttp application over a :class:`ServingCore`."""

    def __init__(self, core: ServingCore, max_request_bytes: int) -> None:
        self._core = core
        self._max_bytes = max_request_bytes
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
            except Exception:  # a bug of ours: answer 500 and keep serving
                log.exception("REST %s %s failed", request.method, request.path)
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
        if (request.content_length or 0) > self._max_bytes:
            raise PayloadTooLargeError(
                f"request body of {request.content_length} bytes is over the "
                f"{self._max_bytes}-byte limit"
            )
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge as exc:  # chunked bodies are only caught here
            raise PayloadTooLargeError(
                f"request body is over the {self._max_bytes}-byte limit"
            ) from exc
        if not body:
            raise InvalidRequestError("the request body is empty; send a JSON inference request")
        parsed = parse_rest_infer(model, body)
        outputs = await self._core.infer(parsed)
        return web.Response(body=rest_response(parsed, outputs), content_type=_JSON)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = generate_latest(self._core.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
