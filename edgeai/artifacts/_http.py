"""Small threaded HTTP file servers: the repository's and a LAN peer's mirror.

``http.server.ThreadingHTTPServer`` with our own path handling: a request path is
percent-decoded once, every segment must match a conservative file-name pattern, and the
resolved file must lie inside one of the allowed top-level folders. Nothing the standard
library's ``translate_path`` would normalise (``%2e%2e``, backslashes, ``//``, absolute
paths) reaches the file system, and directories are never listed.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from edgeai.plumbing.files import sha256_file

_HASHED = re.compile(r"^(?P<sha>[0-9a-f]{64})\.(?P<name>[^/]+)$")
# What our repositories name things: roles, versions, profiles, hash-prefixed bundle files.
_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
_MAX_PATH = 1024
# A client that stalls mid-request loses its thread after this long (slow-loris).
REQUEST_TIMEOUT_S = 30.0


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


def safe_segments(raw_path: str) -> list[str] | None:
    r"""Return the decoded segments of a request path, or None when any is not allowed.

    The query and fragment are dropped; the path is percent-decoded exactly once, and
    every segment must be a plain file name (no ``..``, no hidden names, no ``%``, ``\\``
    or NUL left after decoding), so double encoding cannot smuggle a separator through.
    """
    if len(raw_path) > _MAX_PATH:
        return None
    try:
        path = unquote(urlsplit(raw_path).path, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    if not path.startswith("/"):
        return None
    segments = path[1:].split("/")
    if not all(_SEGMENT.match(s) for s in segments):
        return None
    return segments


class _Handler(BaseHTTPRequestHandler):
    """GET and HEAD of files that :meth:`lookup` names; 404 for the rest, 405 for writes."""

    requests: list[str]
    lookup: Callable[[str], Path | None]
    timeout = REQUEST_TIMEOUT_S
    # An HTTP/0.9 reply has no status line; answer malformed request lines as HTTP/1.0.
    default_request_version = "HTTP/1.0"
    server_version = "edgeai-artifacts"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: the daemons' logs are structured elsewhere."""

    def do_GET(self) -> None:
        data = self._send_head()
        if data is not None:
            with data:
                try:
                    while chunk := data.read(1 << 16):
                        self.wfile.write(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return

    def do_HEAD(self) -> None:
        data = self._send_head()
        if data is not None:
            data.close()

    def _refuse_method(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED)

    def __getattr__(self, name: str) -> Any:
        # The stdlib dispatches on do_<METHOD> and answers 501 (a 5xx) to methods it
        # lacks; any method but GET and HEAD is the client's mistake here: 405.
        if name.startswith("do_"):
            return self._refuse_method
        raise AttributeError(name)

    def _send_head(self) -> BinaryIO | None:
        local = type(self).lookup(self.path)
        if local is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        try:
            data = local.open("rb")
            size = local.stat().st_size
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return None
        self.requests.append(self.path)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        return data


def _start(lookup: Callable[[str], Path | None], host: str, port: int) -> ServeHandle:
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests, "lookup": staticmethod(lookup)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return ServeHandle(server, requests)


def serve_directory(root: Path, host: str, port: int, *, allowed: tuple[str, ...]) -> ServeHandle:
    """Serve regular files under ``root``'s ``allowed`` top-level folders; the rest is 404."""
    return _start(directory_lookup(root, allowed), host, port)


def directory_lookup(root: Path, allowed: tuple[str, ...]) -> Callable[[str], Path | None]:
    """Map a raw request path to a file under ``root``'s ``allowed`` folders, or None.

    The check is an allow-list on the decoded path, and again on the resolved file: a
    symbolic link that leads out of its allowed folder is not followed.
    """
    bases = {name: (root / name).resolve() for name in allowed}

    def lookup(raw_path: str) -> Path | None:
        segments = safe_segments(raw_path)
        if segments is None or len(segments) < 2 or segments[0] not in bases:
            return None
        base = bases[segments[0]]
        local = base.joinpath(*segments[1:]).resolve()
        if not local.is_relative_to(base) or not local.is_file():
            return None
        return local

    return lookup


def serve_mirror(bundle_dir: Path, host: str = "127.0.0.1", port: int = 0) -> ServeHandle:
    """Serve a verified bundle to LAN peers as an (untrusted) TUF target mirror.

    A request for ``.../<sha256>.<file>`` (the hash-prefixed name ngclient asks for) is
    answered with ``bundle_dir/<file>`` when that file had this sha256 at start; anything
    else is 404, so a peer holding another release sends the client on to the server.
    Clients verify every byte against signed metadata, so the mirror needs no keys.
    """
    offered = {f"{sha256_file(p)}.{p.name}": p for p in sorted(bundle_dir.iterdir()) if p.is_file()}

    def lookup(raw_path: str) -> Path | None:
        segments = safe_segments(raw_path)
        name = segments[-1] if segments else ""
        return offered.get(name) if _HASHED.match(name) else None

    return _start(lookup, host, port)
