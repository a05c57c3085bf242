"""HTTP transport for the TUF client: bounded per socket read and per whole download.

ngclient takes any ``tuf.ngclient.FetcherInterface`` (``tuf/ngclient/fetcher.py``): only
``_fetch(url) -> Iterator[bytes]`` is ours; length limits and hash checks stay in ngclient.
Its default ``Urllib3Fetcher`` reads fixed-size chunks, which blocks until a whole chunk
arrives from a trickling server; ``http.client``'s ``read1`` returns whatever one socket
read gives, so the deadline is checked as bytes come in.
"""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from tuf.api import exceptions

from edgeai.artifacts._tuf import FetcherInterface


class DeadlineExceeded(exceptions.SlowRetrievalError):
    """The whole download ran past its deadline."""


class HttpFetcher(FetcherInterface):
    """Plain HTTP(S) GETs with a socket timeout; no proxies (devices talk to the LAN)."""

    def __init__(self, socket_timeout_s: float = 10.0, chunk_size: int = 64 * 1024) -> None:
        self.socket_timeout_s = socket_timeout_s
        self.chunk_size = chunk_size

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise exceptions.DownloadError(f"unsupported URL {url!r}: use http:// or https://")
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        conn = kind(parts.hostname, parts.port, timeout=self.socket_timeout_s)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target or "/", headers={"User-Agent": "edgeai-updater"})
            response = conn.getresponse()
        except TimeoutError as exc:
            conn.close()
            raise exceptions.SlowRetrievalError(f"{url}: no answer in time") from exc
        except OSError as exc:
            conn.close()
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        if response.status >= 400:
            conn.close()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {response.status}", response.status)
        return self._chunks(conn, response, url)

    def _chunks(
        self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse, url: str
    ) -> Iterator[bytes]:
        try:
            while chunk := response.read1(self.chunk_size):
                yield chunk
        except TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"{url}: stalled") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise exceptions.DownloadError(f"{url}: {exc}") from exc
        finally:
            conn.close()


class DeadlineFetcher(FetcherInterface):
    """Wrap a fetcher so every chunk checks one deadline shared by a whole download."""

    def __init__(self, inner: FetcherInterface, clock: Callable[[], float] = time.monotonic):
        self.inner = inner
        self._clock = clock
        self._deadline: float | None = None

    @contextmanager
    def deadline(self, seconds: float) -> Iterator[None]:
        """Within the block, any fetch past ``seconds`` from now raises DeadlineExceeded."""
        self._deadline = self._clock() + seconds
        try:
            yield
        finally:
            self._deadline = None

    def _check(self, url: str) -> None:
        if self._deadline is not None and self._clock() > self._deadline:
            raise DeadlineExceeded(f"{url}: download deadline passed")

    def _fetch(self, url: str) -> Iterator[bytes]:
        self._check(url)
        chunks = self.inner.fetch(url)
        return self._watch(chunks, url)

    def _watch(self, chunks: Iterator[bytes], url: str) -> Iterator[bytes]:
        for chunk in chunks:
            self._check(url)
            yield chunk
