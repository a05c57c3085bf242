"""A client of the SuperLink's Control API (what the ``flwr`` CLI talks to), in-process.

Spawning ``flwr`` for every status poll costs a Python start-up and Flower's import
(seconds on a small server) and needs a Flower config in ``FLWR_HOME``; the CLI's own
client (``flwr.supercore.control.ControlHttpClient``, protobuf over HTTP) does the same
calls directly. Without account authentication on the SuperLink (the open-source
default) no token is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeai.errors import EdgeAIError

if TYPE_CHECKING:
    from flwr.supercore.control import ControlHttpClient

    from edgeai.server.superlink.process import SuperLinkConfig


class ControlAPIError(EdgeAIError, ConnectionError):
    """The SuperLink's Control API refused a request or could not be reached."""


@dataclass(frozen=True)
class ControlConnection:
    """Where the Control API is and how to trust it."""

    address: str  # host:port
    insecure: bool = False
    root_certificates: Path | None = None  # the CA that signed the SuperLink's certificate

    @classmethod
    def of(cls, cfg: SuperLinkConfig) -> ControlConnection:
        """The connection to the SuperLink that ``cfg`` runs."""
        return cls(cfg.address, cfg.insecure, None if cfg.insecure else cfg.ssl_ca_certfile)


@contextmanager
def control_client(conn: ControlConnection, what: str) -> Iterator[ControlHttpClient]:
    """A Control API client; Flower's errors become :class:`ControlAPIError` naming ``what``."""
    from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor  # noqa: PLC0415
    from flwr.supercore.control import ControlHttpClient  # noqa: PLC0415

    roots = None if conn.insecure or conn.root_certificates is None else conn.root_certificates
    client = ControlHttpClient.from_server_address(
        conn.address,
        conn.insecure,
        roots.read_bytes() if roots is not None else None,
        [CliClientHttpInterceptor()],
    )
    try:
        yield client
    except ControlAPIError:
        raise
    except Exception as exc:  # Flower raises httpx, FlowerError and protobuf errors
        raise ControlAPIError(f"{what} failed at {conn.address}: {exc}") from exc
    finally:
        client.close()
