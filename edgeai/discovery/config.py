"""Discovery settings, validated when read, and the error discovery raises."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, field_validator
from zeroconf import BadTypeInNameException, IPVersion

# Re-exported by ``zeroconf/__init__.py`` but not listed in its ``__all__``.
from zeroconf._utils.name import service_type_name

from edgeai.configfile import Frozen
from edgeai.errors import EdgeAIError

_IP_VERSIONS = {"v4": IPVersion.V4Only, "v6": IPVersion.V6Only, "all": IPVersion.All}


class DiscoveryError(EdgeAIError, RuntimeError):
    """mDNS could not be started, a service could not be registered, or misuse of the API."""


class DiscoveryConfig(Frozen):
    """How the server and the agents use mDNS / DNS-SD.

    ``interfaces`` are IP addresses of the interfaces to use (``None``: all of them).
    ``requery_interval_s`` is how often to ask the LAN again (``None``: never), because
    python-zeroconf's browser stops asking after its start-up queries (see
    ``docs/DISCOVERY.md``).  ``fleet`` ignores servers and peers of other fleets.
    """

    server_type: str = "_edgeai._tcp.local."
    agent_type: str = "_edgeai-agent._tcp.local."
    interfaces: tuple[str, ...] | None = None
    ip_version: Literal["auto", "v4", "v6", "all"] = "auto"
    requery_interval_s: float | None = Field(default=10.0, gt=0)
    resolve_timeout_s: float = Field(default=3.0, gt=0)
    fleet: str | None = None

    @field_validator("server_type", "agent_type")
    @classmethod
    def _service_type(cls, value: str) -> str:
        try:
            service_type_name(value, strict=True)
        except BadTypeInNameException as exc:
            raise ValueError(
                f"not a DNS-SD service type ({exc}); write it like '_edgeai._tcp.local.' "
                "(the part after '_' is at most 15 characters)"
            ) from exc
        return value

    @field_validator("interfaces")
    @classmethod
    def _addresses(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("give at least one interface address, or leave it out for all")
        for item in value:
            try:
                ipaddress.ip_address(item)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not an IP address of an interface") from exc
        return value

    def zeroconf_ip_version(self) -> IPVersion | None:
        """The :class:`zeroconf.IPVersion` to open sockets for (``None``: let zeroconf pick)."""
        return _IP_VERSIONS.get(self.ip_version)
