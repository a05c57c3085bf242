"""The federation server (``edgeai server``): one supervisor over its parts.

==================  ============================================================
``superlink/``      the ``flower-superlink`` process, Control API, enrollment, runs
``broker/``         the managed Mosquitto: config, accounts, ACL
``collector/``      telemetry in, the fleet's state, Prometheus out
``releases/``       gate, compile per profile, sign, canary waves
``demo/``           ``edgeai demo``: the whole loop on loopback
``config.py``       ``federation.toml``
``daemon.py``       :class:`FederationServer`: starts the parts in order
``commands.py``     the ``edgeai server`` CLI
==================  ============================================================

Imported lazily: ``edgeai --help`` must not pay for Mosquitto, TUF and Flower clients.
"""

from __future__ import annotations

from edgeai.plumbing.lazy import lazy_face

__all__ = ["FederationServer", "ServerConfig", "check_server_inputs", "load_server_config"]

_FACE = {
    "FederationServer": "edgeai.server.daemon",
    "ServerConfig": "edgeai.server.config",
    "check_server_inputs": "edgeai.server.config",
    "load_server_config": "edgeai.server.config",
}
__getattr__ = lazy_face(__name__, _FACE)
