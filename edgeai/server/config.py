"""``federation.toml``: the operator's server, validated when it is read.

Sections: ``[superlink]``, ``[broker]``, ``[artifacts]``, ``[collector]``, ``[releases]``,
``[dashboard]``, ``[discovery]`` and ``[run]`` (see ``server/federation.toml``). Relative
paths are resolved against ``state_dir`` (itself relative to the file's folder).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from edgeai.configfile import Frozen, anchor_fields, anchored, parse, read_mapping
from edgeai.discovery.config import DiscoveryConfig
from edgeai.errors import ConfigError, EdgeAIError
from edgeai.server.broker import BrokerConfig
from edgeai.server.collector import CollectorConfig
from edgeai.server.dashboard.config import DashboardConfig
from edgeai.server.releases import ReleaseConfig
from edgeai.server.superlink import SuperLinkConfig


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
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)  # the operator's page
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


def _inputs(cfg: ServerConfig) -> list[tuple[str, Path | None, str]]:
    """Files the operator supplies (field, path, what it must be); the rest the server makes."""
    link, broker, coll = cfg.superlink, cfg.broker, cfg.collector
    pem = "a PEM file"
    inputs: list[tuple[str, Path | None, str]] = [
        ("releases.calibration", cfg.releases.calibration, "an .npz with X and y"),
        ("superlink.ssl_certfile", link.ssl_certfile, pem),
        ("superlink.ssl_keyfile", link.ssl_keyfile, pem),
        ("superlink.ssl_ca_certfile", link.ssl_ca_certfile, pem),
        ("broker.certfile", broker.certfile, pem),
        ("broker.keyfile", broker.keyfile, pem),
        ("collector.certfile", coll.certfile, pem),
        ("collector.keyfile", coll.keyfile, pem),
        ("artifacts.targets_key", cfg.artifacts.targets_key, "the targets signing key"),
    ]
    if not broker.manage:  # a managed broker makes its CA (and the collector's copy) itself
        inputs += [
            ("broker.ca_file", broker.ca_file, pem),
            ("collector.ca_file", coll.ca_file, pem),
        ]
    if cfg.run is not None:
        inputs.append(("run.experiment", cfg.run.experiment, "an experiment TOML"))
    return inputs


def check_server_inputs(cfg: ServerConfig, source: Path) -> None:
    """Check, before anything starts, every file ``federation.toml`` names as an input.

    Missing or unreadable files, a calibration file that is not a data set, and an
    experiment that does not validate are one :class:`ConfigError` naming each field.

    Raises
    ------
    ConfigError
        The file, the fields and the fix.
    """
    problems = [
        f"  {field} = '{path}': no such file (give the path of {what})"
        for field, path, what in _inputs(cfg)
        if path is not None and not path.is_file()
    ]
    if not problems:
        problems = _check_contents(cfg)
    if problems:
        raise ConfigError("\n".join([f"{source}: {len(problems)} bad input file(s)", *problems]))


def _check_contents(cfg: ServerConfig) -> list[str]:
    from edgeai.data.datasets import load_npz  # noqa: PLC0415

    problems: list[str] = []
    try:
        load_npz(cfg.releases.calibration, float_targets=True)
    except EdgeAIError as exc:
        problems.append(f"  releases.calibration: {exc} (give an .npz with X and y)")
    if cfg.run is not None:
        try:
            from edgeai.flower.experiment import (  # noqa: PLC0415  (train extra)
                check_experiment_data,
                load_experiment,
            )
            from edgeai.flower.runspec import check_deployable  # noqa: PLC0415
        except ImportError:  # an inference-only install cannot run training anyway
            return [*problems, "  run: needs the train extra (pip install 'edgeai[train]')"]
        try:
            exp = load_experiment(cfg.run.experiment)
            check_experiment_data(exp, cfg.run.experiment)
            check_deployable(exp)
        except EdgeAIError as exc:
            problems.append(f"  run.experiment: {exc}")
    return problems
