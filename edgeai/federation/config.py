"""``federation.toml``: the operator's server, validated when it is read.

Sections: ``[superlink]``, ``[broker]``, ``[artifacts]``, ``[collector]``, ``[releases]``,
``[discovery]`` and ``[run]`` (see ``server/federation.toml``). Relative paths are resolved
against ``state_dir`` (itself relative to the file's folder).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from edgeai.configfile import Frozen, anchor_fields, anchored, parse, read_mapping
from edgeai.discovery.config import DiscoveryConfig
from edgeai.federation.broker import BrokerConfig
from edgeai.federation.collector import CollectorConfig
from edgeai.federation.releases import ReleaseConfig
from edgeai.federation.superlink import SuperLinkConfig


class ArtifactsConfig(Frozen):
    """``[artifacts]``: the TUF repository and the HTTP server agents pull from."""

    repository: Path = Path("tuf")  # public: metadata/ and targets/ are served
    # Private, never under ``repository``. The server signs with the targets, snapshot
    # and timestamp keys; root.pem belongs offline (docs/SECURITY.md).
    keys_dir: Path = Path("tuf.keys")
    targets_key: Path | None = None  # a targets key kept elsewhere (default keys_dir)
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    base_url: str | None = None  # what agents dial (default http://host:port)


class RunConfig(Frozen):
    """``[run]``: the training run the server submits (an experiment file, as simulate takes)."""

    experiment: Path  # e.g. simulations/quickstart.toml; [federation] sizes the fleet
    rounds: int | None = Field(None, ge=1)  # overrides the experiment's rounds
    min_nodes: int | None = Field(None, ge=1)
    node_wait_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(24 * 3600.0, gt=0)  # the whole run
    release_every: int = Field(0, ge=0)  # propose a release every N rounds; 0: the last only


class ServerConfig(Frozen):
    """The whole ``federation.toml``."""

    fleet: str = "default"
    state_dir: Path = Path("/var/lib/edgeai")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9100, ge=0, le=65535)  # Prometheus /metrics (0: any free port)
    superlink: SuperLinkConfig
    broker: BrokerConfig
    artifacts: ArtifactsConfig = Field(default_factory=ArtifactsConfig)
    collector: CollectorConfig = Field(default_factory=CollectorConfig)
    releases: ReleaseConfig
    discovery: DiscoveryConfig | None = Field(default_factory=DiscoveryConfig)  # false: off
    run: RunConfig | None = None

    @field_validator("discovery", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        return None if value is False else value  # TOML has no null

    @model_validator(mode="after")
    def _one_fleet(self) -> ServerConfig:
        for section, fleet in (("broker", self.broker.fleet), ("collector", self.collector.fleet)):
            if fleet != self.fleet:
                raise ValueError(
                    f"{section}.fleet = {fleet!r} but fleet = {self.fleet!r}: use one fleet name"
                )
        return self


_PATHS = {
    "superlink": (
        "database",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_ca_certfile",
        "flwr_home",
        "log_path",
    ),
    "broker": ("data_dir", "ca_file", "certfile", "keyfile", "password_file", "acl_file"),
    "artifacts": ("repository", "keys_dir", "targets_key"),
    "collector": ("db_path", "ca_file", "certfile", "keyfile"),
    "releases": ("state_dir", "calibration"),
    "run": ("experiment",),
}


def load_server_config(path: Path) -> ServerConfig:
    """Read ``federation.toml``; relative paths become relative to ``state_dir``.

    Raises
    ------
    ConfigError
        The file, field and fix of the problems found.
    """
    data = read_mapping(path)
    base = path.resolve().parent
    fleet = data.get("fleet", "default")
    for section in ("broker", "collector"):  # one fleet name, given once
        if isinstance(data.setdefault(section, {}), dict):
            data[section].setdefault("fleet", fleet)
    cfg = parse(ServerConfig, data, str(path))
    # Anchor after validation, so that defaults (collector.db_path = "fleet.sqlite") land in
    # state_dir too, never in whatever directory the server was started from.
    state = anchored(cfg.state_dir, base)
    updates: dict[str, object] = {"state_dir": state}
    for section, keys in _PATHS.items():
        part = getattr(cfg, section)
        if part is None:
            continue
        anchor = base if section == "run" else state  # the experiment is the operator's file
        updates[section] = anchor_fields(part, keys, anchor)
    return cfg.model_copy(update=updates)
