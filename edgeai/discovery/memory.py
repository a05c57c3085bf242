"""The discovery interfaces the daemons depend on, and an in-memory LAN for unit tests."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edgeai.discovery.advert import FederationAdvert
from edgeai.discovery.browse import Directory, Discovery
from edgeai.discovery.config import DiscoveryError
from edgeai.discovery.records import AgentInfo, Peer, ServerInfo
from edgeai.errors import ConfigError


class AgentDiscovery(Protocol):
    """What an agent needs from discovery; :class:`~edgeai.discovery.Discovery` is one."""

    def start(self) -> None:
        """Begin browsing."""

    def advertise_agent(self, info: AgentInfo) -> str:
        """Advertise this agent; return its service name."""

    def update_agent(self, **fields: Any) -> AgentInfo:
        """Re-announce with some fields changed."""

    def find_server(self, timeout_s: float, fleet: str | None = None) -> ServerInfo | None:
        """Wait for a server of the fleet."""

    def servers(self) -> list[ServerInfo]:
        """Servers known now."""

    def peers(self) -> list[Peer]:
        """Other agents known now."""

    def close(self) -> None:
        """Stop and withdraw."""


class ServerAdvert(Protocol):
    """What the server needs to advertise itself (:class:`FederationAdvert` is one)."""

    def advertise(self, info: ServerInfo) -> str:
        """Announce the server; return its service name."""
        ...

    def close(self) -> None:
        """Withdraw the advert; idempotent."""
        ...


class MemoryLan:
    """A LAN where every advert is seen at once by every :class:`MemoryDiscovery` on it."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.directory = Directory()
        self._lock = threading.Lock()
        self._taken: set[str] = set()

    def claim(self, instance: str, service_type: str) -> str:
        """Reserve a unique service name, renaming like mDNS probing does."""
        with self._lock:
            name, n = f"{instance}.{service_type}", 2
            while name in self._taken:
                name, n = f"{instance}-{n}.{service_type}", n + 1
            self._taken.add(name)
            return name

    def advertise_server(self, info: ServerInfo, service_type: str = "_edgeai._tcp.local.") -> str:
        """Put a server on the LAN; return its service name."""
        name = self.claim(f"edgeai-{info.fleet}", service_type)
        self.directory.put_server(dataclasses.replace(info, name=name))
        return name

    def withdraw(self, name: str) -> None:
        """Take a server or an agent off the LAN (its goodbye packet)."""
        with self._lock:
            self._taken.discard(name)
        self.directory.remove(name)


class MemoryDiscovery:
    """:class:`AgentDiscovery` on a :class:`MemoryLan`: no sockets, no threads."""

    def __init__(
        self,
        lan: MemoryLan,
        *,
        fleet: str | None = None,
        agent_type: str = "_edgeai-agent._tcp.local.",
    ) -> None:
        self._lan = lan
        self._fleet = fleet
        self._agent_type = agent_type
        self._agent: AgentInfo | None = None
        self._name = ""
        self._running = False

    def start(self) -> None:
        """Begin browsing (nothing to open)."""
        self._running = True

    def advertise_agent(self, info: AgentInfo) -> str:
        """Advertise this agent; return its service name."""
        self._check_running()
        if self._agent is not None:
            raise DiscoveryError("the agent is already advertised; use update_agent()")
        self._name = self._lan.claim(info.node, self._agent_type)
        self._publish(info)
        return self._name

    def update_agent(self, **fields: Any) -> AgentInfo:
        """Re-announce with some fields changed."""
        if self._agent is None:
            raise DiscoveryError("the agent is not advertised; call advertise_agent() first")
        try:
            info = dataclasses.replace(self._agent, **fields)
        except TypeError as exc:
            raise ConfigError(f"cannot update the agent advert: {exc}") from exc
        self._publish(info)
        return info

    def find_server(self, timeout_s: float, fleet: str | None = None) -> ServerInfo | None:
        """Wait up to ``timeout_s`` for a server of ``fleet``."""
        self._check_running()
        return self._lan.directory.wait_server(fleet or self._fleet, timeout_s)

    def servers(self) -> list[ServerInfo]:
        """Servers on the LAN (of the configured fleet, if one is set)."""
        return self._lan.directory.servers(self._fleet)

    def peers(self) -> list[Peer]:
        """Other agents on the LAN, of the configured fleet or else of this agent's."""
        fleet = self._fleet or (self._agent.fleet if self._agent else None)
        return self._lan.directory.peers(fleet, exclude=self._name)

    def close(self) -> None:
        """Withdraw this agent; idempotent."""
        self._running = False
        if self._name:
            self._lan.withdraw(self._name)
        self._agent, self._name = None, ""

    def _publish(self, info: AgentInfo) -> None:
        self._agent = info
        self._lan.directory.put_peer(Peer.of(self._name, info, self._lan.clock()))

    def _check_running(self) -> None:
        if not self._running:
            raise DiscoveryError("discovery is not running; call start() first")


class MemoryAdvert:
    """:class:`ServerAdvert` on a :class:`MemoryLan`: the server's side of the twin."""

    def __init__(self, lan: MemoryLan) -> None:
        self._lan = lan
        self.name = ""

    def advertise(self, info: ServerInfo) -> str:
        """Put the server on the LAN; return its service name."""
        if self.name:
            raise DiscoveryError("the server is already advertised")
        self.name = self._lan.advertise_server(info)
        return self.name

    def close(self) -> None:
        """Take the server off the LAN; idempotent."""
        if self.name:
            self._lan.withdraw(self.name)
        self.name = ""


if TYPE_CHECKING:  # mypy checks that both implementations keep to the interfaces
    _real: type[AgentDiscovery] = Discovery
    _fake: type[AgentDiscovery] = MemoryDiscovery
    _real_advert: type[ServerAdvert] = FederationAdvert
    _fake_advert: type[ServerAdvert] = MemoryAdvert
