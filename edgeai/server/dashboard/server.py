"""The dashboard's HTTP server on a thread of its own (its own event loop), stoppable."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future

from aiohttp import web

from edgeai.errors import EdgeAIError
from edgeai.server.dashboard.app import make_app
from edgeai.server.dashboard.config import DashboardConfig
from edgeai.server.dashboard.source import StateSource

# aiohttp logs every malformed request (a 400 it already answered) with a traceback at
# ERROR: anyone who can reach the port could fill the server's log. Quiet unless asked.
_protocol_log = logging.getLogger("edgeai.server.dashboard.protocol")
_protocol_log.setLevel(logging.CRITICAL)


class DashboardError(EdgeAIError, OSError):
    """The dashboard cannot listen (port taken, host not on this machine)."""


class DashboardServer:
    """Serves :func:`make_app` on ``config.host:config.port`` until :meth:`close`.

    Parameters
    ----------
    source
        The state it shows.
    config
        Host, port (0: any free one), token, refresh period.
    fleet
        The fleet's name (the page's title).
    """

    def __init__(self, source: StateSource, config: DashboardConfig, fleet: str) -> None:
        self.source = source
        self.config = config
        self.fleet = fleet
        self.port: int | None = None
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://host:port/`` (the bound port)."""
        host = self.config.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def start(self, timeout_s: float = 10.0) -> DashboardServer:
        """Bind and serve in the background; returns once listening.

        Raises
        ------
        DashboardError
            The address cannot be bound.
        """
        ready: Future[int] = Future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="edgeai-dashboard", daemon=True
        )
        self._thread.start()
        try:
            self.port = ready.result(timeout_s)
        except OSError as exc:
            self._thread.join(timeout_s)
            self._loop.close()
            cfg = self.config
            raise DashboardError(
                f"the dashboard cannot listen on {cfg.host}:{cfg.port}: "
                f"{exc.strerror or exc} (set [dashboard] port, or enabled = false)"
            ) from exc
        return self

    def _run(self, ready: Future[int]) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            port = self._loop.run_until_complete(self._bind())
        except OSError as exc:
            self._loop.run_until_complete(self._cleanup())
            ready.set_exception(exc)
            return
        ready.set_result(port)
        self._loop.run_forever()
        self._loop.run_until_complete(self._cleanup())
        self._loop.close()

    async def _bind(self) -> int:
        app = make_app(self.source, self.config, self.fleet)
        # Access logs off: a page that refreshes itself would fill the server's log.
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, logger=_protocol_log
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._loop.shutdown_default_executor()  # the file readers' threads end here

    def close(self) -> None:
        """Stop serving and close the state source (idempotent)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            thread.join(10)
        self._thread = None
        self.source.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
