"""The federation server advertises itself as ``_edgeai._tcp.local.``."""

from __future__ import annotations

import dataclasses
from types import TracebackType
from typing import Any, Self

from zeroconf import Zeroconf

from edgeai.discovery.config import DiscoveryConfig, DiscoveryError
from edgeai.discovery.engine import Registration, default_addresses, open_zeroconf
from edgeai.discovery.records import ServerInfo, replaced, server_txt
from edgeai.errors import ConfigError


class FederationAdvert:
    """Advertise one federation server on the LAN until :meth:`close`.

    The instance name defaults to ``edgeai-<fleet>``; a clash with another server is
    resolved by zeroconf's probing (``edgeai-<fleet>-2``, ...).
    """

    def __init__(self, config: DiscoveryConfig, *, instance: str | None = None) -> None:
        self._config = config
        self._instance = instance
        self._zc: Zeroconf | None = None
        self._registration: Registration | None = None
        self._info: ServerInfo | None = None

    @property
    def name(self) -> str:
        """The registered full service name (empty before :meth:`advertise`)."""
        return self._registration.name if self._registration else ""

    @property
    def info(self) -> ServerInfo | None:
        """What is advertised now."""
        return self._info

    def advertise(self, info: ServerInfo) -> str:
        """Open mDNS, probe for the name and announce the server; return the name.

        Raises
        ------
        DiscoveryError
            If mDNS cannot start or the service cannot be registered.
        """
        if self._registration is not None:
            raise DiscoveryError("the server is already advertised; use update()")
        info = self._with_addresses(info)
        self._zc = open_zeroconf(self._config)
        registration = Registration(self._zc, self._config.server_type)
        try:
            name = registration.register(
                self._instance or f"edgeai-{info.fleet}",
                server_txt(info),
                info.superlink_port,
                info.addresses,
            )
        except (DiscoveryError, ConfigError):
            self._zc.close()
            self._zc = None
            raise
        self._registration = registration
        self._info = dataclasses.replace(info, name=name)
        return name

    def update(self, **fields: Any) -> ServerInfo:
        """Re-announce with some fields changed (e.g. ``version="0.2.0"``).

        Raises
        ------
        ConfigError
            If a field is unknown or its new value is invalid.
        """
        if self._registration is None or self._info is None:
            raise DiscoveryError("nothing is advertised yet; call advertise() first")
        info = self._with_addresses(replaced(self._info, fields, "server advert"))
        self._registration.update(server_txt(info), info.superlink_port, info.addresses)
        self._info = info
        return info

    def close(self) -> None:
        """Withdraw the advert (goodbye packets) and close mDNS; safe to call twice."""
        registration, self._registration = self._registration, None
        zc, self._zc = self._zc, None
        if registration is not None:
            registration.unregister()
        if zc is not None:
            zc.close()

    def _with_addresses(self, info: ServerInfo) -> ServerInfo:
        if info.addresses:
            return info
        return dataclasses.replace(info, addresses=default_addresses(self._config))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
