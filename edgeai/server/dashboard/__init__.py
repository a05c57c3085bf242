"""The operator's view (``edgeai dashboard``): a read-only HTTP API and a web page.

Served by ``edgeai server run`` beside its Prometheus port, and by ``edgeai dashboard``
from a server's state directory. See docs/DASHBOARD.md.

==================  ============================================================
``config.py``       ``[dashboard]``: host, port, token
``source.py``       :class:`StateSource`: the state directory, read-only
``alerts.py``       what needs attention (pure)
``page.py``         node paging and filtering, the Jinja2 page
``app.py``          the aiohttp routes, auth and hostile-input guard
``server.py``       :class:`DashboardServer`: the app on its own thread
``templates/``      ``index.html``
``static/``         the page's script and styles, uPlot 1.6.32 (MIT) vendored from npm
==================  ============================================================

Imported lazily: reading ``federation.toml`` must not pay for aiohttp and Jinja2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgeai.plumbing.lazy import lazy_face

if TYPE_CHECKING:
    from edgeai.server.dashboard.app import check_access, make_app
    from edgeai.server.dashboard.config import DashboardConfig
    from edgeai.server.dashboard.server import DashboardError, DashboardServer
    from edgeai.server.dashboard.source import StateSource

__all__ = [
    "DashboardConfig",
    "DashboardError",
    "DashboardServer",
    "StateSource",
    "check_access",
    "make_app",
]

_FACE = {
    "DashboardConfig": "edgeai.server.dashboard.config",
    "DashboardError": "edgeai.server.dashboard.server",
    "DashboardServer": "edgeai.server.dashboard.server",
    "StateSource": "edgeai.server.dashboard.source",
    "check_access": "edgeai.server.dashboard.app",
    "make_app": "edgeai.server.dashboard.app",
}
__getattr__ = lazy_face(__name__, _FACE)
