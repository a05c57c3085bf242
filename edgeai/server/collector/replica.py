"""A collector replica: one more member of a shared subscription group, nothing else.

``edgeai server collector --config federation.toml --username edgeai-server-c2`` runs
this: the ``[collector]`` of the server's file with its own broker account (the broker binds
the client id to the user name, so each replica needs one) and its own ``/metrics``.  The
replicas and the server's own collector subscribe to the same ``$share/<group>/...``
filters and write the same SQLite file; see docs/FLEET.md, "Scaling out".
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from edgeai.errors import ConfigError
from edgeai.server.collector.collector import Collector, CollectorConfig
from edgeai.server.collector.mqtt import PahoSubscriber

__all__ = ["PASSWORD_ENV", "replica_config", "run_replica"]

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGEAI_COLLECTOR_PASSWORD"  # noqa: S105 - the variable's name
"""Where a replica finds its broker password when no ``--password-file`` is given."""


def replica_config(
    base: CollectorConfig, username: str | None = None, password_file: Path | None = None
) -> CollectorConfig:
    """``base`` logged in as this replica's account.

    The password comes from ``password_file``, ``$EDGEAI_COLLECTOR_PASSWORD`` or the
    ``[collector]`` password, in that order.

    Raises
    ------
    ConfigError
        Without ``shared_group`` (two collectors would each take every message, and the
        server's collector would keep a stale picture of the nodes), or without a password
        for a new account.
    """
    if base.shared_group is None:
        raise ConfigError(
            "[collector] shared_group is not set: a collector replica only makes sense in a "
            'shared subscription group; set shared_group = "collectors" in federation.toml '
            "(the server's own collector then joins the group too)"
        )
    password = base.password
    if password_file is not None:
        try:
            password = password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"--password-file {password_file}: {exc}") from exc
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    if username is not None and username != base.username and password == base.password:
        raise ConfigError(
            f"account {username!r} has no password: give --password-file or set "
            f"{PASSWORD_ENV} (enroll the account with `edgeai server add-node {username}`)"
        )
    return base.model_copy(update={"username": username or base.username, "password": password})


def run_replica(
    config: CollectorConfig,
    stop: threading.Event,
    *,
    metrics_host: str = "127.0.0.1",
    metrics_port: int = 0,
    on_ready: Callable[[str], object] = lambda _url: None,
    poll_s: float = 0.5,
) -> None:
    """Collect until ``stop`` is set; ``on_ready(metrics_url)`` once subscribed.

    A broker that is down at start is not an error: paho reconnects on its own, and the
    broker queues the group's share for this session meanwhile.  On ``stop`` the replica
    unsubscribes and drains its session before it disconnects: a replica scaled away
    leaves nothing behind (a SIGKILLed one leaves its share queued until it restarts).
    """
    transport = PahoSubscriber(config.mqtt_options())
    with Collector(config, transport) as collector:
        url = collector.serve_metrics(metrics_host, metrics_port).url
        announced = False
        while not stop.is_set():
            if not announced and collector.wait_ready(poll_s):
                log.info("collector %s subscribed; metrics at %s", config.username, url)
                on_ready(url)
                announced = True
            elif announced:
                stop.wait(poll_s)
        # Leave the group before disconnecting: the broker would otherwise keep queuing this
        # replica's share in its session (Mosquitto 2.0) until it came back.
        if collector.is_connected() and not transport.leave():
            log.warning("collector %s: the broker did not confirm the unsubscribe", config.username)
