"""federation.toml: the shipped examples validate; paths anchor; mistakes name the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeai.errors import ConfigError
from edgeai.flower.experiment import load_experiment
from edgeai.server.config import load_server_config

SERVER = Path(__file__).resolve().parents[2] / "server"


def test_the_example_federation_toml_validates_as_a_whole() -> None:
    cfg = load_server_config(SERVER / "federation.toml")
    assert cfg.fleet == cfg.broker.fleet == cfg.collector.fleet == "default"
    assert cfg.superlink.node_auth
    assert cfg.run is not None
    assert cfg.run.experiment == Path("/etc/edgeai/experiment.toml")


def test_the_kubernetes_config_map_validates(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all((SERVER / "k8s" / "server.yaml").read_text()))
    (config_map,) = [d for d in docs if d["kind"] == "ConfigMap"]
    (tmp_path / "federation.toml").write_text(config_map["data"]["federation.toml"])
    (tmp_path / "experiment.toml").write_text(config_map["data"]["experiment.toml"])
    cfg = load_server_config(tmp_path / "federation.toml")
    assert cfg.broker.url == "mqtts://mosquitto:8883"
    exp = load_experiment(tmp_path / "experiment.toml")
    assert exp.privacy.enabled


def test_relative_paths_anchor_to_state_dir_and_the_experiment_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "federation.toml").write_text(
        'state_dir = "state"\n[superlink]\ninsecure = true\nnode_auth = false\n'
        'database = "link.db"\n[broker]\nmanage = true\ntls = false\n'
        '[releases]\nstate_dir = "rel"\ncalibration = "cal.npz"\n'
        '[run]\nexperiment = "exp.toml"\n'
    )
    cfg = load_server_config(tmp_path / "federation.toml")
    state = tmp_path / "state"
    assert cfg.state_dir == state
    assert cfg.superlink.database == state / "link.db"
    assert cfg.broker.data_dir == state / "broker"
    assert cfg.releases.calibration == state / "cal.npz"
    assert cfg.collector.db_path == state / "fleet.sqlite"
    assert cfg.run is not None
    assert cfg.run.experiment == tmp_path / "exp.toml"


def test_a_typo_and_a_fleet_mismatch_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text(
        '[superlink]\ninsecure = true\nnode_auth = false\ndatabase = "l.db"\n'
        '[broker]\nmanage = true\ntls = false\n[releases]\nstate_dir = "r"\ncalibraton = "c"\n'
    )
    with pytest.raises(ConfigError, match=r"calibraton.*did you mean 'calibration'"):
        load_server_config(path)
    path.write_text(
        'fleet = "a"\n[superlink]\ninsecure = true\nnode_auth = false\ndatabase = "l.db"\n'
        '[broker]\nmanage = true\ntls = false\nfleet = "b"\n'
        '[releases]\nstate_dir = "r"\ncalibration = "c"\n'
    )
    with pytest.raises(ConfigError, match="use one fleet name"):
        load_server_config(path)
