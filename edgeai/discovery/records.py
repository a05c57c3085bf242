"""What the federation and the agents say about themselves in DNS-SD TXT records.

Pure logic, no sockets: the dataclasses, their validation, and the TXT wire format
(RFC 6763 §6: a sequence of length-prefixed ``key=value`` strings).  Anything on the LAN
can send us TXT data, so the parsers return ``None`` for garbage and never raise.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edgeai.errors import ConfigError

#: Schema version of our TXT records (RFC 6763 §6.7 recommends a first "txtvers" key).
TXT_VERSION = "1"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")
_MAX_STRING = 255  # one TXT string is length-prefixed by a single byte
_ARTIFACT_SCHEMES = ("http", "https")
_MQTT_SCHEMES = ("mqtt", "mqtts", "tcp", "ssl", "ws", "wss")


def _check_name(what: str, value: str) -> None:
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid name: use 1-63 letters, digits, '.', '_' or '-'"
        )


def _check_version(what: str, value: str) -> None:
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid version: use 1-64 letters, digits, '.', '+', "
            "'_' or '-'"
        )


def _check_port(what: str, value: int | None) -> None:
    if value is None:
        return
    if type(value) is not int or not 1 <= value <= 65535:
        raise ConfigError(f"{what} {value!r} is not a TCP port (1-65535)")


def _check_addresses(value: tuple[str, ...]) -> None:
    if not isinstance(value, tuple) or not all(isinstance(a, str) for a in value):
        raise ConfigError(f"addresses must be a tuple of strings, not {value!r}")


def _check_url(what: str, value: str, schemes: tuple[str, ...]) -> None:
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except (ValueError, TypeError, AttributeError) as exc:  # urlsplit rejects bad IPv6 hosts
        raise ConfigError(f"{what} {value!r} is not a URL: {exc}") from exc
    if parts.scheme not in schemes or not parts.hostname or not port_ok:
        raise ConfigError(
            f"{what} {value!r} must be a URL with a host and one of the schemes "
            f"{', '.join(schemes)}"
        )


def split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` (or ``[v6]:port``) into its parts.

    Raises
    ------
    ConfigError
        If there is no host or the port is not 1-65535.
    """
    host, sep, port = address.rpartition(":") if isinstance(address, str) else ("", "", "")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"address {address!r} must be HOST:PORT with a port 1-65535")
    if any(c.isspace() for c in host):
        raise ConfigError(f"address {address!r} has white space in its host")
    return host, int(port)


@dataclass(frozen=True)
class ServerInfo:
    """How to reach a federation server, as it advertises itself.

    ``name`` (the DNS-SD instance name) and ``addresses`` are filled in on discovery.
    """

    fleet: str
    superlink: str
    artifact_url: str
    mqtt_url: str
    version: str
    addresses: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        _check_name("fleet", self.fleet)
        split_host_port(self.superlink)
        _check_url("artifact_url", self.artifact_url, _ARTIFACT_SCHEMES)
        _check_url("mqtt_url", self.mqtt_url, _MQTT_SCHEMES)
        _check_version("version", self.version)
        _check_addresses(self.addresses)

    @property
    def superlink_port(self) -> int:
        """The SuperLink's port (also the SRV record's port)."""
        return split_host_port(self.superlink)[1]


@dataclass(frozen=True)
class Ports:
    """The TCP ports an agent serves on; ``None`` where it serves nothing."""

    grpc: int | None = None
    http: int | None = None
    artifact: int | None = None

    def __post_init__(self) -> None:
        _check_port("grpc port", self.grpc)
        _check_port("http port", self.http)
        _check_port("artifact port", self.artifact)

    def first(self) -> int:
        """The port for the SRV record: the first one served, or 0 (RFC 2782: no service)."""
        return next((p for p in (self.grpc, self.http, self.artifact) if p is not None), 0)


@dataclass(frozen=True)
class AgentInfo:
    """What an agent advertises about itself (``model_version`` is ``None`` before a model)."""

    node: str
    fleet: str
    profile: str
    model_version: str | None = None
    ports: Ports = field(default_factory=Ports)
    addresses: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_name("node", self.node)
        _check_name("fleet", self.fleet)
        _check_name("profile", self.profile)
        if self.model_version is not None:
            _check_version("model_version", self.model_version)
        if not isinstance(self.ports, Ports):
            raise ConfigError(f"ports must be a Ports, not {type(self.ports).__name__}")
        _check_addresses(self.addresses)


@dataclass(frozen=True)
class Peer:
    """Another agent on the LAN, as last heard over mDNS.

    ``last_seen`` is when mDNS last told us about it, not a liveness signal: records can
    stay cached for 75 minutes after a device dies (liveness comes from MQTT).
    """

    name: str
    node: str
    fleet: str
    profile: str
    model_version: str | None
    addresses: tuple[str, ...]
    ports: Ports
    last_seen: float

    @classmethod
    def of(cls, name: str, agent: AgentInfo, last_seen: float) -> Peer:
        """The peer that advertises ``agent`` under the service name ``name``."""
        return cls(
            name=name,
            node=agent.node,
            fleet=agent.fleet,
            profile=agent.profile,
            model_version=agent.model_version,
            addresses=agent.addresses,
            ports=agent.ports,
            last_seen=last_seen,
        )


def encode_txt(pairs: dict[str, str]) -> bytes:
    """Encode ``key=value`` pairs as TXT record data, ``txtvers`` first.

    Raises
    ------
    ConfigError
        If one ``key=value`` string is longer than a TXT string can be (255 bytes).
    """
    out = bytearray()
    for key, value in {"txtvers": TXT_VERSION, **pairs}.items():
        item = f"{key}={value}".encode()
        if len(item) > _MAX_STRING:
            raise ConfigError(f"TXT entry {key!r} is {len(item)} bytes; the limit is 255")
        out.append(len(item))
        out += item
    return bytes(out)


def decode_txt(data: bytes) -> dict[str, str] | None:
    """Decode TXT record data into a dict; ``None`` if the framing is broken.

    Keys are lower-cased (RFC 6763 §6.4: case-insensitive), only the first occurrence
    of a key counts, and pairs that are not UTF-8 or have no ``=`` are skipped.
    """
    if not isinstance(data, bytes | bytearray):
        return None
    pairs: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        length = data[pos]
        end = pos + 1 + length
        if end > len(data):
            return None
        key, sep, value = bytes(data[pos + 1 : end]).partition(b"=")
        pos = end
        if not sep or not key:
            continue
        try:
            text_key, text_value = key.decode("ascii").lower(), value.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pairs.setdefault(text_key, text_value)
    return pairs


def server_txt(info: ServerInfo) -> bytes:
    """TXT record data for a federation server."""
    return encode_txt(
        {
            "fleet": info.fleet,
            "superlink": info.superlink,
            "artifact_url": info.artifact_url,
            "mqtt_url": info.mqtt_url,
            "version": info.version,
        }
    )


def agent_txt(info: AgentInfo) -> bytes:
    """TXT record data for an agent (absent values are left out)."""
    pairs = {"node": info.node, "fleet": info.fleet, "profile": info.profile}
    optional = {
        "model_version": info.model_version,
        "grpc_port": info.ports.grpc,
        "http_port": info.ports.http,
        "artifact_port": info.ports.artifact,
    }
    pairs.update({k: str(v) for k, v in optional.items() if v is not None})
    return encode_txt(pairs)


def _our_schema(data: bytes) -> dict[str, str] | None:
    pairs = decode_txt(data)
    if pairs is None or pairs.get("txtvers") != TXT_VERSION:
        return None
    return pairs


def _port(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise ConfigError(f"port {text!r} is not a number")
    return int(text)


def parse_server_txt(
    data: bytes, *, name: str = "", addresses: tuple[str, ...] = ()
) -> ServerInfo | None:
    """Read a server's TXT record data; ``None`` if it is not a valid record of ours."""
    pairs = _our_schema(data)
    if pairs is None:
        return None
    try:
        return ServerInfo(
            fleet=pairs["fleet"],
            superlink=pairs["superlink"],
            artifact_url=pairs["artifact_url"],
            mqtt_url=pairs["mqtt_url"],
            version=pairs["version"],
            addresses=addresses,
            name=name,
        )
    except (KeyError, ConfigError):
        return None


def parse_agent_txt(data: bytes, *, addresses: tuple[str, ...] = ()) -> AgentInfo | None:
    """Read an agent's TXT record data; ``None`` if it is not a valid record of ours."""
    pairs = _our_schema(data)
    if pairs is None:
        return None
    try:
        ports = Ports(
            grpc=_port(pairs.get("grpc_port")),
            http=_port(pairs.get("http_port")),
            artifact=_port(pairs.get("artifact_port")),
        )
        return AgentInfo(
            node=pairs["node"],
            fleet=pairs["fleet"],
            profile=pairs["profile"],
            model_version=pairs.get("model_version"),
            ports=ports,
            addresses=addresses,
        )
    except (KeyError, ConfigError):
        return None


_R = TypeVar("_R", "ServerInfo", "AgentInfo")


def replaced(info: _R, fields: dict[str, Any], what: str) -> _R:
    """``info`` with ``fields`` changed and re-validated; a bad field is a ConfigError."""
    try:
        return dataclasses.replace(info, **fields)
    except TypeError as exc:
        raise ConfigError(f"cannot update the {what}: {exc}") from exc
