"""How an MQTT client reaches and logs in to the broker: one model for agents and the server."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from edgeai.configfile import Frozen
from edgeai.telemetry.mqtt import MqttOptions
from edgeai.telemetry.topics import check_name

SCHEMES = {"mqtt": (False, 1883), "mqtts": (True, 8883)}  # scheme -> (TLS, default port)


def check_broker_url(value: str) -> str:
    """Return ``value`` if it is ``mqtt://HOST[:PORT]`` or ``mqtts://HOST[:PORT]``."""
    parts = urlsplit(value)
    if parts.scheme not in SCHEMES or not parts.hostname:
        raise ValueError("use mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (TLS)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in {value!r}") from exc
    return value


class BrokerLogin(Frozen):
    """Broker address, fleet, credentials, TLS files and session timing of one client."""

    broker_url: str = "mqtt://127.0.0.1:1883"
    fleet: str = "default"
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    keepalive_s: int = Field(30, ge=1, le=65535)
    session_expiry_s: int = Field(7 * 24 * 3600, ge=0, le=0xFFFFFFFF)
    reconnect_min_s: int = Field(1, ge=1)
    reconnect_max_s: int = Field(30, ge=1)

    @field_validator("fleet")
    @classmethod
    def _fleet_is_a_topic_level(cls, value: str) -> str:
        return check_name(value, "fleet")

    @field_validator("broker_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_broker_url(value)

    @model_validator(mode="after")
    def _tls_and_login_consistent(self) -> BrokerLogin:
        tls_files = self.ca_file or self.certfile or self.keyfile
        if tls_files and not self.broker_url.startswith("mqtts://"):
            raise ValueError("ca_file/certfile/keyfile are set but broker_url is not mqtts://")
        if self.keyfile and not self.certfile:
            raise ValueError("keyfile without certfile: set certfile too")
        if self.password is not None and self.username is None:
            raise ValueError("password without username: set username too")
        return self

    def options(self, client_id: str, max_inflight: int = 20) -> MqttOptions:
        """The paho transport settings for ``client_id``."""
        parts = urlsplit(self.broker_url)
        tls, default_port = SCHEMES[parts.scheme]
        return MqttOptions(
            host=parts.hostname or "",
            port=parts.port or default_port,
            client_id=client_id,
            tls=tls,
            username=self.username,
            password=self.password,
            ca_file=str(self.ca_file) if self.ca_file else None,
            certfile=str(self.certfile) if self.certfile else None,
            keyfile=str(self.keyfile) if self.keyfile else None,
            keepalive_s=self.keepalive_s,
            session_expiry_s=self.session_expiry_s,
            max_inflight=max_inflight,
            reconnect_min_s=self.reconnect_min_s,
            reconnect_max_s=max(self.reconnect_min_s, self.reconnect_max_s),
        )
