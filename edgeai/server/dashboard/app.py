"""The read-only HTTP API and the page, as an aiohttp application.

Routes (GET and HEAD only; every other method is 405, every other path 404)::

    /                               the page
    /api/v1/fleet                   the rows of ``edgeai fleet status --json``
    /api/v1/runs                    one summary per run
    /api/v1/runs/<id>/rounds        the run's rounds.jsonl, as a list
    /api/v1/releases                releases, their canary waves, what each profile serves
    /api/v1/alerts                  what needs the operator's attention
    /static/<file>                  the page's script, styles and the vendored uPlot

Without a token only loopback peers are answered, and only under a loopback ``Host``
(a DNS-rebinding page in the operator's browser cannot read it); with a token every
request must carry it. Files are read in worker threads, so a slow disk never stalls the
event loop; nothing is ever written.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

from aiohttp import web

from edgeai.plumbing.net import is_loopback
from edgeai.server.dashboard.alerts import alerts
from edgeai.server.dashboard.config import DashboardConfig
from edgeai.server.dashboard.page import NodeQuery, PageRenderer, QueryError, node_page
from edgeai.server.dashboard.source import StateSource

API = "/api/v1"
ALLOWED = ("GET", "HEAD")
STATIC = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
    "uPlot.LICENSE": "text/plain",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
_SOURCE: web.AppKey[StateSource] = web.AppKey("source", StateSource)
_CONFIG: web.AppKey[DashboardConfig] = web.AppKey("config", DashboardConfig)
_FLEET: web.AppKey[str] = web.AppKey("fleet", str)
_PAGE: web.AppKey[PageRenderer] = web.AppKey("page", PageRenderer)
_FILES: web.AppKey[dict[str, bytes]] = web.AppKey("files", dict)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _host_name(host_header: str) -> str:
    """``127.0.0.1:8090`` → ``127.0.0.1``; ``[::1]:8090`` → ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def _token_of(authorization: str) -> str | None:
    """The token in ``Bearer <token>`` or in HTTP Basic's password; None if neither."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2]
    return None


def check_access(
    *, remote: str | None, host_header: str, authorization: str, token: str | None
) -> int | None:
    """None when the request may be answered, else the status to refuse it with (pure).

    With a token: 401 unless the request carries it. Without: 401 for a peer that is not
    on this machine, 403 for a loopback peer that names a non-loopback ``Host``.
    """
    if token is not None:
        given = _token_of(authorization)
        ok = given is not None and hmac.compare_digest(given.encode(), token.encode())
        return None if ok else 401
    if remote is None or not is_loopback(remote):
        return 401
    return None if is_loopback(_host_name(host_header)) else 403


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    config = request.app[_CONFIG]
    refused = check_access(
        remote=request.remote,
        host_header=request.headers.get("Host", ""),
        authorization=request.headers.get("Authorization", ""),
        token=config.token,
    )
    if refused == 401:
        return _error(
            401, "unauthorized: send Authorization: Bearer <[dashboard] token>", auth=True
        )
    if refused is not None:
        return _error(refused, "forbidden: use http://127.0.0.1:<port>/ (Host is not loopback)")
    if request.method not in ALLOWED:
        refusal = _error(405, "read-only: GET and HEAD only")
        refusal.headers["Allow"] = ", ".join(ALLOWED)
        return refusal
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise
    response.headers.update(_HEADERS)
    return response


def _error(status: int, message: str, *, auth: bool = False) -> web.Response:
    response = web.json_response({"error": message}, status=status, headers=_HEADERS)
    if auth:
        response.headers["WWW-Authenticate"] = 'Bearer realm="edgeai", Basic realm="edgeai"'
    return response


def _json(data: Any) -> web.Response:
    body = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return web.Response(
        text=body, content_type="application/json", headers={"Cache-Control": "no-store"}
    )


async def _in_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def _fleet(request: web.Request) -> web.Response:
    return _json(await _in_thread(request.app[_SOURCE].fleet))


async def _runs(request: web.Request) -> web.Response:
    return _json(await _in_thread(request.app[_SOURCE].runs))


async def _rounds(request: web.Request) -> web.Response:
    run_id = request.match_info["run_id"]
    rounds = await _in_thread(lambda: request.app[_SOURCE].rounds(run_id))
    if rounds is None:
        return _error(404, "no such run (GET /api/v1/runs lists them)")
    return _json(rounds)


async def _releases(request: web.Request) -> web.Response:
    return _json(await _in_thread(request.app[_SOURCE].releases))


def _alerts_now(source: StateSource) -> list[Any]:
    nodes = source.nodes()
    return alerts(
        status=source.status(),
        runs=source.runs(),
        releases=source.releases(),
        nodes=nodes,
        seen=source.received(),
        now=source.clock(),
        offline_after_s=source.offline_after_s,
    )


async def _alerts(request: web.Request) -> web.Response:
    found = await _in_thread(lambda: _alerts_now(request.app[_SOURCE]))
    return _json([a.as_json() for a in found])


def _render(app: web.Application, query: NodeQuery) -> str:
    source, config = app[_SOURCE], app[_CONFIG]
    now = source.clock()
    nodes, seen, status = source.nodes(), source.received(), source.status()
    runs, releases = source.runs(), source.releases()
    rounds = {run["id"]: source.rounds(run["id"]) or [] for run in runs}
    return app[_PAGE].render(
        fleet=app[_FLEET],
        nodes=nodes,
        page=node_page(nodes, seen, query, now, config.page_size),
        query=query,
        runs=runs,
        rounds=rounds,
        releases=releases,
        alerts=alerts(
            status=status,
            runs=runs,
            releases=releases,
            nodes=nodes,
            seen=seen,
            now=now,
            offline_after_s=source.offline_after_s,
        ),
        refresh_s=config.refresh_s,
        now=now,
    )


async def _index(request: web.Request) -> web.Response:
    try:
        query = NodeQuery.parse(request.query)
    except QueryError as exc:
        return _error(400, str(exc))
    html = await _in_thread(lambda: _render(request.app, query))
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _static(request: web.Request) -> web.Response:
    # Looked up in a fixed table read at start-up: no path from the URL reaches the disk.
    name = request.match_info["name"]
    body = request.app[_FILES].get(name)
    if body is None:
        return _error(404, "no such file")
    return web.Response(
        body=body,
        content_type=STATIC[name],
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=3600"},
    )


def _read_static() -> dict[str, bytes]:
    folder = resources.files("edgeai.server.dashboard") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC}


def make_app(source: StateSource, config: DashboardConfig, fleet: str) -> web.Application:
    """The dashboard's aiohttp application over ``source``.

    Parameters
    ----------
    source
        Where the state is read from.
    config
        Token, refresh period and page size (host and port are the caller's).
    fleet
        The fleet's name, for the page's title.
    """
    app = web.Application(middlewares=[_guard], client_max_size=1024)
    app[_SOURCE], app[_CONFIG], app[_FLEET] = source, config, fleet
    app[_PAGE], app[_FILES] = PageRenderer(), _read_static()
    app.router.add_get("/", _index)
    app.router.add_get(f"{API}/fleet", _fleet)
    app.router.add_get(f"{API}/runs", _runs)
    app.router.add_get(API + "/runs/{run_id}/rounds", _rounds)
    app.router.add_get(f"{API}/releases", _releases)
    app.router.add_get(f"{API}/alerts", _alerts)
    app.router.add_get("/static/{name}", _static)
    return app
