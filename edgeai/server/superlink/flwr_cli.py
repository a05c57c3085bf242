"""The ``flwr`` CLI's configuration for the fleet's SuperLink, in a ``FLWR_HOME`` of our own.

Flower 1.42's ``flwr ls`` / ``flwr log`` / ``flwr stop`` read ``$FLWR_HOME/config.toml``
(``flwr/cli/flower_config.py:read_superlink_connection``; ``FLWR_HOME`` defaults to
``~/.flwr``, ``flwr/supercore/utils.py:get_flwr_home``): a ``[superlink]`` table with a
``default`` connection name and one ``[superlink.<name>]`` table per connection with
``address`` (the Control API, which shares the SuperLink's port) and ``root-certificates``
(the CA that signed the SuperLink's certificate) or ``insecure = true``.

``edgeai server run`` writes it on every start, so an operator runs::

    FLWR_HOME=/var/lib/edgeai/flwr-home flwr ls edgeai
    FLWR_HOME=/var/lib/edgeai/flwr-home flwr log RUN_ID edgeai --show

Naming the connection (``edgeai``) keeps ``flwr`` from looking for a legacy
``[tool.flwr.federations]`` table in the current directory's pyproject.toml
(``flwr/cli/config_migration.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from edgeai.plumbing.files import atomic_write

if TYPE_CHECKING:
    from edgeai.server.superlink.process import SuperLinkConfig

__all__ = ["CONNECTION", "flwr_config_toml", "write_flwr_config"]

CONNECTION = "edgeai"
"""The connection name ``flwr`` commands take (``flwr ls edgeai``)."""

_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104


def flwr_config_toml(cfg: SuperLinkConfig, name: str = CONNECTION) -> str:
    """``config.toml`` text with one connection, the default, to the SuperLink of ``cfg`` (pure).

    A wildcard listen address becomes loopback: ``flwr`` runs on the server's host.  With
    TLS the SuperLink certificate must name that host (``edgeai`` certificates name
    ``127.0.0.1`` and ``localhost``); otherwise edit ``address``.
    """
    host = _WILDCARDS.get(cfg.host, cfg.host)
    address = f"[{host}]:{cfg.port}" if ":" in host else f"{host}:{cfg.port}"
    lines = [
        f"# Written by edgeai server run (edgeai/server/superlink/flwr_cli.py); `flwr ls {name}`.",
        "[superlink]",
        f"default = {json.dumps(name)}",
        "",
        f"[superlink.{name}]",
        f"address = {json.dumps(address)}",
    ]
    if cfg.insecure or cfg.ssl_ca_certfile is None:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(cfg.ssl_ca_certfile.resolve()))}")
    return "\n".join(lines) + "\n"


def write_flwr_config(cfg: SuperLinkConfig, flwr_home: Path, name: str = CONNECTION) -> Path:
    """Write ``flwr_home/config.toml`` (replacing it: this ``FLWR_HOME`` is ours); return it."""
    path = flwr_home / "config.toml"
    atomic_write(path, flwr_config_toml(cfg, name))
    return path
