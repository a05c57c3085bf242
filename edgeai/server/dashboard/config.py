"""``[dashboard]``: where the operator's read-only API and page listen, and who may read them."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator

from edgeai.configfile import Frozen
from edgeai.plumbing.net import is_loopback


class DashboardConfig(Frozen):
    """The ``[dashboard]`` section of ``federation.toml``.

    Exposure beyond this machine is off by default: a non-loopback ``host`` needs a
    ``token``. Without a token only loopback peers are answered; with one, every request
    must carry it (``Authorization: Bearer <token>``, or HTTP Basic with it as password).
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8090, ge=0, le=65535, description="0 picks a free port")
    token: str | None = Field(
        None, min_length=16, validate_default=True, description="bearer token; None: loopback only"
    )
    refresh_s: float = Field(10.0, ge=1.0, le=3600.0, description="how often the page reloads")
    page_size: int = Field(50, ge=10, le=1000, description="node rows per page")

    @field_validator("token")
    @classmethod
    def _token_off_loopback(cls, token: str | None, info: ValidationInfo) -> str | None:
        host = info.data.get("host")
        if token is None and isinstance(host, str) and not is_loopback(host):
            raise ValueError(
                f"host = {host!r} serves the network, so a token is required: set "
                "token = '<at least 16 characters>' (e.g. `openssl rand -hex 16`), or "
                "host = '127.0.0.1' and reach it through an SSH tunnel"
            )
        return token
