"""A static HTTP server for tests that sends TUF target files slowly (a slow device link)."""

from __future__ import annotations

import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from edgeai.artifacts import ServeHandle


def throttled(root: Path, chunk: int = 2048, delay_s: float = 0.02) -> ServeHandle:
    """Serve ``root``; files under ``/targets/`` go out ``chunk`` bytes every ``delay_s``."""

    class Slow(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *_args: Any) -> None:
            pass

        def copyfile(self, source: Any, outputfile: Any) -> None:
            if "/targets/" not in self.path:
                super().copyfile(source, outputfile)
                return
            while data := source.read(chunk):
                outputfile.write(data)
                outputfile.flush()
                time.sleep(delay_s)  # the throttle under test, not a readiness wait

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    return ServeHandle(server, [])
