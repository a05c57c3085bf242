"""Harness, no tests: a loopback federation for the tests and the benchmark.

A real SuperLink with TLS and node authentication, enrolled SuperNodes running the
real ClientApp, MNIST shards per node.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.agent.supernode import write_node_config
from edgeai.data import load_dataset
from edgeai.flower.experiment import Experiment
from edgeai.flower.runspec import RunPaths, RunSpec
from edgeai.plumbing.pki import NodeKey, generate_node_key
from edgeai.plumbing.processes import find_executable
from edgeai.server.superlink import ControlConnection, enroll, enrolled_nodes, generate_tls
from edgeai.server.superlink.process import (
    SUPEREXEC_POLL_ENV,
    SuperLinkConfig,
    SuperLinkProcess,
    flower_env,
)
from tests.mosquitto import free_port

REPO = Path(__file__).resolve().parents[2]


def make_shards(root: Path, count: int, size: int = 300) -> list[Path]:
    """``count`` disjoint MNIST shards of ``size`` images (uint8, the data-file contract)."""
    train = load_dataset("mnist").train
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        part = slice(i * size, (i + 1) * size)
        x = np.rint(train.x[part, 0] * 255).astype(np.uint8)
        path = root / f"shard-{i}.npz"
        np.savez(path, X=x, y=train.y[part])
        paths.append(path)
    return paths


def experiment(rounds: int, nodes: int, round_timeout_s: float = 60.0, **extra: Any) -> Experiment:
    """A tiny DP run: dp-cnn-tiny, one local epoch, every node each round."""
    raw: dict[str, Any] = {
        "name": "flower-test",
        "model": {"name": "dp-cnn-tiny"},
        "federation": {
            "num_clients": nodes,
            "rounds": rounds,
            "round_timeout_s": round_timeout_s,
        },
        "training": {"local_epochs": 1, "batch_size": 32, "learning_rate": 1.0},
        "privacy": {"enabled": True, "noise_multiplier": 0.5, "max_grad_norm": 1.0},
        **extra,
    }
    return Experiment.model_validate(raw)


@dataclass
class Node:
    """One SuperNode process and what it was started with."""

    name: str
    key: NodeKey
    config: Path
    log: Path
    ledger: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Fleet:
    """The SuperLink and the SuperNodes of one test."""

    root: Path
    link: SuperLinkProcess
    conn: ControlConnection
    ca: Path
    nodes: dict[str, Node] = field(default_factory=dict)

    @classmethod
    def start(cls, root: Path) -> Fleet:
        """Start a SuperLink with TLS and node authentication under ``root``."""
        tls = generate_tls(root / "tls")
        cfg = SuperLinkConfig(
            port=free_port(),
            database=root / "superlink.db",
            ssl_certfile=tls.cert,
            ssl_keyfile=tls.key,
            ssl_ca_certfile=tls.ca_cert,
            flwr_home=root / "flwr-home",
            log_path=root / "superlink.log",
        )
        link = SuperLinkProcess(cfg)
        link.start()
        return cls(root, link, ControlConnection.of(cfg), tls.ca_cert)

    def add_node(
        self, name: str, data: Path, *, enrolled: bool = True, extra: dict[str, str] | None = None
    ) -> Node:
        """Make a key (enrolled or not), a node config, and start the node's SuperNode."""
        home = self.root / "nodes" / name
        key = generate_node_key(home / "node.key", comment=name)
        if enrolled:
            enroll(self.conn, key.public, name=name)
        ledger = home / "ledger.sqlite"
        values = {"node-name": name, "data-path": str(data), "ledger-path": str(ledger)}
        config = write_node_config(home / "node-config.toml", {**values, **(extra or {})})
        node = Node(name, key, config, home / "supernode.log", ledger)
        self.nodes[name] = node
        self.start_node(name)
        return node

    def start_node(self, name: str) -> None:
        """(Re)start the named node's SuperNode with its key."""
        node = self.nodes[name]
        argv = [
            find_executable("flower-supernode"),
            "--superlink",
            self.link.config.address,
            "--root-certificates",
            str(self.ca),
            "--auth-supernode-private-key",
            str(node.key.private),
            "--node-config",
            str(node.config),
            "--port",
            str(free_port()),
            "--isolation",
            "subprocess",
        ]
        # PYTHONPATH: a test may name a ClientApp in tests/ (the fault-injecting one).
        env = flower_env(
            node.log.parent / "flwr-home",
            {"PYTHONPATH": str(REPO), SUPEREXEC_POLL_ENV: "0.1"},
        )
        with node.log.open("ab") as out:
            node.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def kill_node(self, name: str) -> None:
        """SIGKILL the node's SuperNode and the ClientApp processes it started."""
        proc = self.nodes[name].proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            import os  # noqa: PLC0415

            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def online(self) -> set[str]:
        """Names of the nodes the SuperLink sees online."""
        return {n.name for n in enrolled_nodes(self.conn) if n.status == "online"}

    def stop(self) -> None:
        """Stop every process this fleet started."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                import os  # noqa: PLC0415

                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGTERM)
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(node.proc.pid, signal.SIGKILL)
                    node.proc.wait(10)
        self.link.stop()


def rounds_of(spec: RunSpec) -> list[dict[str, Any]]:
    """The run's ``rounds.jsonl`` lines."""
    path = RunPaths(spec.out_dir).rounds
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def status_of(spec: RunSpec) -> dict[str, Any]:
    """The run's ``status.json`` (empty before the ServerApp wrote it)."""
    path = RunPaths(spec.out_dir).status
    return json.loads(path.read_text()) if path.exists() else {}
