"""The boundary to python-zeroconf: open sockets, register services, send queries.

Every zeroconf or socket exception is translated here into :class:`DiscoveryError`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import re
import secrets
import threading
from collections.abc import Callable

import zeroconf
from zeroconf import IPVersion, ServiceInfo, Zeroconf, current_time_millis

# The same query builder the ServiceBrowser uses for its own scheduled queries: it adds
# the known answers from the cache (RFC 6762 §7.1) and honours duplicate question
# suppression (§7.3).  A ``cpdef`` in the compiled module, so callable from Python.
from zeroconf._services.browser import generate_service_query

# Re-exported by ``zeroconf/__init__.py`` but not listed in its ``__all__``.
from zeroconf._utils.net import get_all_addresses

from edgeai.discovery.config import DiscoveryConfig, DiscoveryError

log = logging.getLogger(__name__)

_HOST_LABEL = re.compile(r"[^A-Za-z0-9-]+")


def open_zeroconf(config: DiscoveryConfig) -> Zeroconf:
    """Open a :class:`zeroconf.Zeroconf` on the configured interfaces.

    Raises
    ------
    DiscoveryError
        If the sockets cannot be opened (no such interface, no multicast route).
    """
    interfaces = list(config.interfaces) if config.interfaces else zeroconf.InterfaceChoice.All
    try:
        return Zeroconf(interfaces=interfaces, ip_version=config.zeroconf_ip_version())
    except (OSError, zeroconf.Error) as exc:
        raise DiscoveryError(
            f"cannot start mDNS on {config.interfaces or 'all interfaces'}: {exc} "
            "(does the interface exist, with multicast on and a route to 224.0.0.0/4?)"
        ) from exc


def default_addresses(config: DiscoveryConfig) -> tuple[str, ...]:
    """Addresses to put in A/AAAA records when the caller gave none.

    The configured interface addresses, or else every non-loopback IPv4 address of the
    host (loopback only if that is all there is).
    """
    if config.interfaces:
        return config.interfaces
    found = get_all_addresses()
    outside = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    return tuple(outside or found)


def addresses_of(info: ServiceInfo) -> tuple[str, ...]:
    """The resolved addresses of a service, IPv4 first."""
    return tuple(info.parsed_addresses(IPVersion.V4Only) + info.parsed_addresses(IPVersion.V6Only))


def send_ptr_query(zc: Zeroconf, types: set[str]) -> None:
    """Ask the LAN once for every instance of ``types`` (a multicast QM PTR question).

    The answers reach every browser of these types on ``zc``.  Cache and question
    history belong to zeroconf's event loop, so the query is built there.
    """

    def _in_loop() -> None:
        if zc.done:
            return
        for out in generate_service_query(zc, current_time_millis(), set(types), True, None):
            zc.async_send(out)

    loop = zc.loop
    if loop is None or loop.is_closed():
        return
    # A loop closed between the check and the call raises RuntimeError: nothing to ask.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_in_loop)


class Registration:
    """One service this process advertises: register, update its TXT, withdraw it.

    ``instance`` is the wanted instance name; on a conflict zeroconf renames it
    (``node-2``, ...), and :attr:`name` is what was finally registered.
    """

    def __init__(self, zc: Zeroconf, service_type: str) -> None:
        self._zc = zc
        self._type = service_type
        self._info: ServiceInfo | None = None

    @property
    def name(self) -> str:
        """The registered full service name (empty before :meth:`register`)."""
        return self._info.name if self._info else ""

    def register(self, instance: str, txt: bytes, port: int, addresses: tuple[str, ...]) -> str:
        """Probe for the name and announce the service; return the registered name."""
        if self._info is not None:
            raise DiscoveryError(f"{self._info.name} is already advertised; use update()")
        # One host name per registration: two agents on one machine must not withdraw
        # each other's A records when one of them leaves.
        label = _HOST_LABEL.sub("-", instance).strip("-")[:40] or "edgeai"
        host = f"{label}-{secrets.token_hex(3)}.local."
        info = self._service_info(f"{instance}.{self._type}", txt, port, addresses, host)
        try:
            self._zc.register_service(info, allow_name_change=True)
        except (zeroconf.Error, OSError, RuntimeError) as exc:
            raise DiscoveryError(f"cannot advertise {info.name}: {exc!r}") from exc
        self._info = info
        return info.name

    def update(self, txt: bytes, port: int, addresses: tuple[str, ...]) -> None:
        """Announce new TXT data (and port, addresses) under the same name."""
        if self._info is None:
            raise DiscoveryError("nothing is advertised yet; call register() first")
        old = self._info
        info = self._service_info(old.name, txt, port, addresses, old.server or "")
        try:
            self._zc.update_service(info)
        except (zeroconf.Error, OSError, RuntimeError) as exc:
            raise DiscoveryError(f"cannot update {info.name}: {exc!r}") from exc
        self._info = info

    def unregister(self) -> None:
        """Send the goodbye packets (TTL 0) and forget the service; errors are logged."""
        info, self._info = self._info, None
        if info is None or self._zc.done:
            return
        try:
            self._zc.unregister_service(info)
        except (zeroconf.Error, OSError, RuntimeError) as exc:
            log.warning("could not withdraw %s: %r", info.name, exc)

    def _service_info(
        self, name: str, txt: bytes, port: int, addresses: tuple[str, ...], host: str
    ) -> ServiceInfo:
        try:
            return ServiceInfo(
                self._type,
                name,
                port=port,
                properties=txt,
                server=host,
                parsed_addresses=list(addresses),
            )
        except (zeroconf.Error, ValueError) as exc:
            raise DiscoveryError(f"cannot describe service {name!r}: {exc!r}") from exc


class PeriodicTask:
    """Call ``action`` every ``interval_s`` (plus up to ``jitter`` of it) until stopped.

    The jitter keeps a fleet that booted together from querying in lock-step (the same
    reason RFC 6762 §5.2 delays a browser's first query at random).  ``wait`` is the
    sleep, injectable for tests: it gets the delay and returns True to stop.
    """

    def __init__(
        self,
        action: Callable[[], None],
        interval_s: float,
        *,
        name: str,
        jitter: float = 0.1,
        rng: random.Random | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, not {interval_s}")
        self._action = action
        self._interval_s = interval_s
        self._jitter = jitter
        self._rng = rng or random.Random()  # noqa: S311 - timing jitter, not security
        self._stop = threading.Event()
        self._wait = wait or self._stop.wait
        self._thread = threading.Thread(target=self.run, name=name, daemon=True)

    def next_delay(self) -> float:
        """Seconds until the next call."""
        return self._interval_s * (1 + self._jitter * self._rng.random())

    def run(self) -> None:
        """The loop (the thread's body): wait, act, repeat; an action error is logged."""
        while not self._wait(self.next_delay()):
            if self._stop.is_set():
                return
            try:
                self._action()
            except Exception:  # a failed re-query must not end the schedule
                log.exception("periodic task %s failed", self._thread.name)

    def start(self) -> None:
        """Start the loop on a daemon thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the loop and wait for its thread to end."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
