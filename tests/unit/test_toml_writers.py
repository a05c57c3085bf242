"""TOML that edgeai writes (with tomli_w) parses back to what was meant, awkward strings too."""

from __future__ import annotations

import tomllib
from pathlib import Path

from edgeai.agent.config import load_agent_config
from edgeai.agent.supernode import write_node_config
from edgeai.flower.experiment import load_experiment
from edgeai.server.broker import Credentials
from edgeai.server.config import load_server_config
from edgeai.server.demo import demo
from edgeai.server.superlink.runs import SPEC_KEY, app_pyproject

AWKWARD = 'a "quoted" C:\\path\\ with é, a tab\t and\nnewline'


def test_the_flower_app_pyproject() -> None:
    app = tomllib.loads(app_pyproject(client_app="tests.x:app"))
    flwr = app["tool"]["flwr"]["app"]
    assert flwr["components"] == {
        "serverapp": "edgeai.flower.server_app:app",
        "clientapp": "tests.x:app",
    }
    assert flwr["config"] == {SPEC_KEY: ""}
    assert app["project"]["dependencies"] == []
    assert app["build-system"]["build-backend"] == "hatchling.build"


def test_the_node_config_keeps_any_string(tmp_path: Path) -> None:
    values = {"data-path": AWKWARD, "partition-id": "3"}
    path = write_node_config(tmp_path / "node-config.toml", values)
    assert tomllib.loads(path.read_text(encoding="utf-8")) == values


def test_add_node_credentials(tmp_path: Path) -> None:
    creds = Credentials("n1", AWKWARD, "mqtts://h:8883", "f", tmp_path / "ca.pem")
    text = creds.toml("telemetry")
    assert text.startswith("[telemetry]\n")
    assert tomllib.loads(text) == {"telemetry": {k: str(v) for k, v in creds.settings().items()}}


def test_the_demo_writes_configs_the_loaders_accept(tmp_path: Path) -> None:
    d = demo.Demo(root=tmp_path / "demo", rounds=4, profiles=("rpi5", "x86-64-avx2"))
    d.server_dir.mkdir(parents=True)
    experiment = d.server_dir / "experiment.toml"
    experiment.write_text(demo._experiment(4, 2), encoding="utf-8")
    exp = load_experiment(experiment)
    assert (exp.name, exp.federation.rounds, exp.federation.num_clients) == ("demo", 4, 2)
    federation = d.server_dir / "federation.toml"
    cert = tmp_path / 'odd "dir"' / "server.pem"
    federation.write_text(
        demo._federation(d, cert, tmp_path / "k.pem", tmp_path / "ca.pem"), encoding="utf-8"
    )
    server = load_server_config(federation)
    assert server.superlink.ssl_certfile == cert
    assert server.discovery is not None
    assert server.discovery.server_type == d.service_type
    agent = demo.AgentProc("demo-rpi5", "rpi5", d.root / "demo-rpi5", 1, 2)
    agent.root.mkdir(parents=True)
    creds = Credentials("demo-rpi5", AWKWARD, "mqtts://127.0.0.1:1883", "demo", None)
    (agent.root / "telemetry.toml").write_text(creds.toml(), encoding="utf-8")
    demo._write_agent_config(d, agent)
    cfg = load_agent_config(agent.root / "agent.toml")
    assert (cfg.node, cfg.profile) == ("demo-rpi5", "rpi5")
    assert cfg.telemetry is not None
    assert cfg.telemetry.password == AWKWARD
    assert cfg.discovery is not None
    assert cfg.discovery.agent_type == d.agent_type
