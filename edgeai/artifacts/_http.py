"""Small threaded HTTP file servers: the repository's and a LAN peer's mirror.

``http.server.ThreadingHTTPServer`` with ``SimpleHTTPRequestHandler`` (it normalises the
path and drops ``..``), restricted to named top-level folders, without directory listings.
"""

from __future__ import annotations

import re
import threading
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeai.artifacts._bundle import sha256_file

_HASHED = re.compile(r"^(?P<sha>[0-9a-f]{64})\.(?P<name>[^/]+)$")


class ServeHandle:
    """A running file server: ``url``, the ``requests`` it answered, and :meth:`close`."""

    def __init__(self, server: ThreadingHTTPServer, requests: list[str]) -> None:
        self._server = server
        self.requests = requests
        host, port = server.server_address[:2]
        self.url = f"http://{host!s}:{port}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=f"http:{port}"
        )
        self._thread.daemon = True
        self._thread.start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ServeHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start(handler: type[SimpleHTTPRequestHandler], host: str, port: int) -> ServeHandle:
    requests: list[str] = []
    handler.requests = requests  # type: ignore[attr-defined]
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return ServeHandle(server, requests)


class _Quiet(SimpleHTTPRequestHandler):
    requests: list[str]

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the agent's logs are structured elsewhere."""

    def list_directory(self, path: Any) -> None:  # noqa: ARG002 (stdlib signature)
        """Never list directories."""
        self.send_error(HTTPStatus.NOT_FOUND)


def serve_directory(root: Path, host: str, port: int, *, allowed: tuple[str, ...]) -> ServeHandle:
    """Serve files under ``root``'s ``allowed`` top-level folders; everything else is 404."""
    prefixes = tuple(f"/{name}/" for name in allowed)

    class Handler(_Quiet):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def send_head(self) -> Any:
            path = self.path.split("?", 1)[0]
            if not path.startswith(prefixes) or "/../" in path or path.endswith("/"):
                self.send_error(HTTPStatus.NOT_FOUND)
                return None
            self.requests.append(path)
            return super().send_head()

    return _start(Handler, host, port)


def serve_mirror(bundle_dir: Path, host: str = "127.0.0.1", port: int = 0) -> ServeHandle:
    """Serve a verified bundle to LAN peers as an (untrusted) TUF target mirror.

    A request for ``.../<sha256>.<file>`` (the hash-prefixed name ngclient asks for) is
    answered with ``bundle_dir/<file>`` when that file had this sha256 at start; anything
    else is 404, so a peer holding another release sends the client on to the server.
    Clients verify every byte against signed metadata, so the mirror needs no keys.
    """
    offered = {f"{sha256_file(p)}.{p.name}": p for p in sorted(bundle_dir.iterdir()) if p.is_file()}

    class Handler(_Quiet):
        def send_head(self) -> Any:
            name = self.path.split("?", 1)[0].rsplit("/", 1)[-1]
            match = _HASHED.match(name)
            local = offered.get(name) if match else None
            if local is None:
                self.send_error(HTTPStatus.NOT_FOUND)
                return None
            self.requests.append(self.path)
            try:
                data = local.open("rb")
            except OSError:
                self.send_error(HTTPStatus.NOT_FOUND)
                return None
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(local.stat().st_size))
            self.end_headers()
            return data

    return _start(Handler, host, port)
