"""``agent.toml``: everything one device's agent needs, validated when it is read.

Relative paths are resolved against ``state_dir`` (for state) or the config file's folder
(for files the operator provides), so one file works from any working directory.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from edgeai.configfile import Frozen, anchor_fields, anchored, load
from edgeai.discovery.config import DiscoveryConfig
from edgeai.serving.server import ServingConfig
from edgeai.task.config import TaskConfig
from edgeai.telemetry.client import TelemetryConfig

_NODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOSTPORT = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9_.-]+):\d{1,5}$")


class FederationConfig(Frozen):
    """``[federation]``: the Flower SuperNode the agent keeps running."""

    enabled: bool = True
    # Fleet API of the SuperLink as HOST:PORT; leave it out to find it with zeroconf.
    superlink: str | None = None
    insecure: bool = False
    root_certificates: Path | None = None
    auth_private_key: Path | None = None  # the node's key; the operator enrolls its public half
    runtime_port: int = Field(9094, ge=1, le=65535)  # two agents on one host need two ports
    executable: str = "flower-supernode"
    # A warm SuperExec that forks ClientApps from a process with torch and Opacus already
    # imported (edgeai.agent.warm_exec), instead of Flower's fresh interpreter per message:
    # 4-6 s less per round on a 2-core box (bench/bench_fleet_round.py). Linux only.
    warm_clientapp: bool = True
    restart_initial_s: float = Field(1.0, gt=0)
    restart_max_s: float = Field(60.0, gt=0)

    @field_validator("superlink")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is not None and not _HOSTPORT.match(value):
            raise ValueError("write the Fleet API address as HOST:PORT, e.g. '10.0.0.5:9092'")
        return value

    @model_validator(mode="after")
    def _tls_choice(self) -> FederationConfig:
        if self.insecure and self.root_certificates is not None:
            raise ValueError("insecure = true and root_certificates set: choose one")
        return self


class UpdatesConfig(Frozen):
    """``[updates]``: signed model releases pulled from the artifact repository (TUF)."""

    enabled: bool = True
    # Base URL of the repository (metadata/ and targets/); leave it out to use the one the
    # server advertises over zeroconf.
    repository_url: str | None = None
    trusted_root: Path | None = None  # the pinned root.json the device was enrolled with
    interval_s: float = Field(60.0, gt=0)
    max_bundle_bytes: int = Field(256 * 1024 * 1024, gt=0)
    download_deadline_s: float = Field(300.0, gt=0)
    # Where this node offers its verified bundle to LAN peers (an untrusted TUF mirror: the
    # peers check every byte against signed metadata, so it needs no token). Default: the
    # serving host, which is loopback unless the device serves its LAN.
    mirror_host: str | None = None

    @model_validator(mode="after")
    def _root_needed(self) -> UpdatesConfig:
        if self.enabled and self.trusted_root is None:
            raise ValueError(
                "updates need the pinned TUF root: set trusted_root = 'root.json' "
                "(or enabled = false to serve only the installed model)"
            )
        return self


class AgentConfig(Frozen):
    """The whole ``agent.toml``."""

    node: str
    profile: str  # a profile name (`edgeai profiles list`) or a YAML path
    state_dir: Path = Path("/var/lib/edgeai")
    data: Path | None = None  # this device's training data (.npz X, y); None: serve only
    # The task this device trains: [task] name = "mnist" (a built-in) or ref = "module:attr"
    # with path = the folder the module is in (default: this file's). None: the plan's task,
    # which suits built-ins only (a ref names a folder on the server).
    task: TaskConfig | None = None
    bundle: Path | None = None  # a factory bundle to serve until the first release arrives
    metrics_interval_s: float = Field(30.0, gt=0)
    shutdown_grace_s: float = Field(10.0, ge=0)
    federation: FederationConfig = Field(default_factory=FederationConfig)
    updates: UpdatesConfig = Field(default_factory=lambda: UpdatesConfig(enabled=False))
    serving: ServingConfig = Field(default_factory=ServingConfig)
    telemetry: TelemetryConfig | None = None  # None: no broker (metrics only on /metrics)
    discovery: DiscoveryConfig | None = Field(default_factory=DiscoveryConfig)  # false: off

    @field_validator("discovery", mode="before")
    @classmethod
    def _off(cls, value: object) -> object:
        # TOML has no null: `discovery = false` turns mDNS off.
        return None if value is False else value

    @field_validator("node")
    @classmethod
    def _node_name(cls, value: str) -> str:
        if not _NODE.match(value):
            raise ValueError(
                "use 1-63 letters, digits, '-', '_' or '.', starting with a letter or digit "
                "(it is an MQTT topic level and an mDNS instance name)"
            )
        return value

    @model_validator(mode="after")
    def _needs(self) -> AgentConfig:
        if self.federation.enabled and self.data is None:
            raise ValueError(
                "federation.enabled needs data = 'PATH.npz' (this device's training data), "
                "or set federation.enabled = false to serve only"
            )
        if self.discovery is None:
            if self.federation.enabled and self.federation.superlink is None:
                raise ValueError("discovery is off, so set federation.superlink = 'HOST:PORT'")
            if self.updates.enabled and self.updates.repository_url is None:
                raise ValueError("discovery is off, so set updates.repository_url")
        return self


def load_agent_config(path: Path) -> AgentConfig:
    """Read ``agent.toml``; relative paths become relative to the file's folder.

    Raises
    ------
    ConfigError
        The file, field and fix of the first problems found.
    """
    cfg = load(AgentConfig, path)
    base = path.resolve().parent
    state = anchored(cfg.state_dir, base)
    changes: dict[str, object] = {
        "state_dir": state,
        "data": anchored(cfg.data, base),
        "bundle": anchored(cfg.bundle, base),
        "federation": anchor_fields(
            cfg.federation, ("root_certificates", "auth_private_key"), base
        ),
        "updates": anchor_fields(cfg.updates, ("trusted_root",), base),
    }
    if cfg.task is not None and cfg.task.ref is not None:
        folder = anchored(Path(cfg.task.path or "."), base)
        changes["task"] = cfg.task.model_copy(update={"path": str(folder)})
    if cfg.telemetry is not None:
        # (outbox_path is relative to state_dir: the agent anchors it there.)
        changes["telemetry"] = anchor_fields(
            cfg.telemetry, ("ca_file", "certfile", "keyfile"), base
        )
    return cfg.model_copy(update=changes)
