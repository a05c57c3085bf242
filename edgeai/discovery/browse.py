"""The agent's side: find the federation server, advertise itself, keep a peer table.

python-zeroconf's :class:`~zeroconf.ServiceBrowser` sends four start-up queries and then
asks again only to refresh records it already has (``zeroconf/_services/browser.py``,
``QueryScheduler``).  A server that appears later is found only through its own
announcements; a device that missed them never finds it.  So :class:`Discovery` also
asks the LAN every ``requery_interval_s`` (see ``docs/DISCOVERY.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from zeroconf import ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from edgeai.discovery.config import DiscoveryConfig, DiscoveryError
from edgeai.discovery.engine import (
    PeriodicTask,
    Registration,
    addresses_of,
    default_addresses,
    open_zeroconf,
    send_ptr_query,
)
from edgeai.discovery.records import (
    AgentInfo,
    Peer,
    ServerInfo,
    agent_txt,
    parse_agent_txt,
    parse_server_txt,
    replaced,
)

log = logging.getLogger(__name__)


class Directory:
    """What mDNS has told us: servers and peers by service name, safe across threads.

    Waiters of :meth:`wait_server` wake as soon as a matching server is put.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._servers: dict[str, ServerInfo] = {}
        self._peers: dict[str, Peer] = {}

    def put_server(self, server: ServerInfo) -> None:
        """Add or replace a server (keyed by its service name)."""
        with self._changed:
            self._servers[server.name] = server
            self._changed.notify_all()

    def put_peer(self, peer: Peer) -> None:
        """Add or replace a peer (keyed by its service name)."""
        with self._changed:
            self._peers[peer.name] = peer
            self._changed.notify_all()

    def remove(self, name: str) -> None:
        """Forget a server or a peer (its goodbye packet arrived or its record expired)."""
        with self._changed:
            self._servers.pop(name, None)
            self._peers.pop(name, None)
            self._changed.notify_all()

    def servers(self, fleet: str | None = None) -> list[ServerInfo]:
        """Known servers of ``fleet`` (all if ``None``), sorted by name."""
        with self._changed:
            found = [s for s in self._servers.values() if fleet is None or s.fleet == fleet]
        return sorted(found, key=lambda s: s.name)

    def peers(self, fleet: str | None = None, exclude: str = "") -> list[Peer]:
        """Known peers of ``fleet`` (all if ``None``) except ``exclude``, sorted by node."""
        with self._changed:
            found = [
                p
                for p in self._peers.values()
                if p.name != exclude and (fleet is None or p.fleet == fleet)
            ]
        return sorted(found, key=lambda p: (p.node, p.name))

    def wait_server(self, fleet: str | None, timeout_s: float) -> ServerInfo | None:
        """Return the first server of ``fleet`` as soon as there is one, or ``None``."""
        with self._changed:
            self._changed.wait_for(lambda: bool(self.servers(fleet)), max(timeout_s, 0.0))
            found = self.servers(fleet)
        return found[0] if found else None


class Discovery:
    """An agent's mDNS: browse for servers and peers, advertise the agent, re-query.

    ``clock`` stamps :attr:`Peer.last_seen` (wall time by default).  Use as a context
    manager or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, config: DiscoveryConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._directory = Directory()
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._requery_task: PeriodicTask | None = None
        self._registration: Registration | None = None
        self._agent: AgentInfo | None = None
        self._closing = False

    def start(self) -> None:
        """Open mDNS, start browsing and the periodic re-query.

        Raises
        ------
        DiscoveryError
            If mDNS cannot start, or it was started already.
        """
        if self._zc is not None or self._closing:
            raise DiscoveryError("discovery was started already (a closed one cannot restart)")
        self._zc = open_zeroconf(self._config)
        types = [self._config.server_type, self._config.agent_type]
        try:
            self._browser = ServiceBrowser(self._zc, types, handlers=[self._on_change])
        except (RuntimeError, OSError) as exc:  # the event loop died under us
            self.close()
            raise DiscoveryError(f"cannot browse for {types}: {exc!r}") from exc
        if self._config.requery_interval_s is not None:
            self._requery_task = PeriodicTask(
                self.requery, self._config.requery_interval_s, name="edgeai-discovery-requery"
            )
            self._requery_task.start()

    def requery(self) -> None:
        """Ask the LAN now for servers and agents; answers arrive through the browser."""
        if self._zc is not None and not self._closing:
            send_ptr_query(self._zc, {self._config.server_type, self._config.agent_type})

    def advertise_agent(self, info: AgentInfo) -> str:
        """Advertise this agent; return its service name (renamed if the node name clashed).

        Raises
        ------
        DiscoveryError
            If discovery is not started, the agent is advertised already, or mDNS fails.
        """
        zc = self._started()
        if self._registration is not None:
            raise DiscoveryError("the agent is already advertised; use update_agent()")
        if not info.addresses:
            info = dataclasses.replace(info, addresses=default_addresses(self._config))
        registration = Registration(zc, self._config.agent_type)
        registration.register(info.node, agent_txt(info), info.ports.first(), info.addresses)
        self._registration, self._agent = registration, info
        return registration.name

    def update_agent(self, **fields: Any) -> AgentInfo:
        """Re-announce the agent with some fields changed (e.g. ``model_version="3"``).

        Raises
        ------
        ConfigError
            If a field is unknown or its new value is invalid.
        """
        if self._registration is None or self._agent is None:
            raise DiscoveryError("the agent is not advertised; call advertise_agent() first")
        info = replaced(self._agent, fields, "agent advert")
        self._registration.update(agent_txt(info), info.ports.first(), info.addresses)
        self._agent = info
        return info

    def find_server(self, timeout_s: float, fleet: str | None = None) -> ServerInfo | None:
        """Wait up to ``timeout_s`` for a server of ``fleet`` (default: the configured one).

        Returns as soon as one is known, or ``None`` at the deadline.  Asks the LAN once
        right away when none is known yet.
        """
        self._started()
        fleet = fleet or self._config.fleet
        if not self._directory.servers(fleet):
            self.requery()
        return self._directory.wait_server(fleet, timeout_s)

    def servers(self) -> list[ServerInfo]:
        """Servers known now (of the configured fleet, if one is set)."""
        return self._directory.servers(self._config.fleet)

    def peers(self) -> list[Peer]:
        """Other agents known now, of the configured fleet or else of this agent's fleet.

        mDNS is not a liveness signal: a peer here may have died minutes ago.
        """
        fleet = self._config.fleet or (self._agent.fleet if self._agent else None)
        own = self._registration.name if self._registration else ""
        return self._directory.peers(fleet, exclude=own)

    def close(self) -> None:
        """Stop re-querying and browsing, withdraw the advert, close mDNS; idempotent."""
        self._closing = True
        task, self._requery_task = self._requery_task, None
        browser, self._browser = self._browser, None
        registration, self._registration = self._registration, None
        zc, self._zc = self._zc, None
        if task is not None:
            task.stop()
        if browser is not None:
            browser.cancel()  # joins the browser's thread
        if registration is not None:
            registration.unregister()
        if zc is not None:
            zc.close()

    def _started(self) -> Zeroconf:
        if self._zc is None or self._closing:
            raise DiscoveryError("discovery is not running; call start() first")
        return self._zc

    def _on_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        # Runs on the browser's thread; an exception here would end that thread.
        try:
            if state_change is ServiceStateChange.Removed:
                self._directory.remove(name)
            else:
                self._resolve(zeroconf, service_type, name)
        except Exception:
            if not self._closing:
                log.exception("discovery: could not handle %s of %s", state_change, name)

    def _resolve(self, zc: Zeroconf, service_type: str, name: str) -> None:
        info = ServiceInfo(service_type, name)
        # Answers to our PTR question carry SRV/TXT/A as additional records, so this
        # is normally served from the cache without waiting.
        if self._closing or not info.request(zc, self._config.resolve_timeout_s * 1000):
            return
        addresses = addresses_of(info)
        if service_type == self._config.server_type:
            server = parse_server_txt(info.text, name=name, addresses=addresses)
            if server is None:
                self._unreadable(name)
                return
            self._directory.put_server(server)
            return
        agent = parse_agent_txt(info.text, addresses=addresses)
        if agent is None:
            self._unreadable(name)
            return
        self._directory.put_peer(Peer.of(name, agent, self._clock()))

    def _unreadable(self, name: str) -> None:
        # An entry whose TXT record turned to garbage is no longer trusted either.
        log.debug("discovery: ignoring %s with an unreadable TXT record", name)
        self._directory.remove(name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
