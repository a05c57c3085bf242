"""``edgeai demo``: the whole loop on one machine — server, broker and three agents on loopback.

Everything is real and separate processes: ``edgeai server run`` (Mosquitto with TLS,
passwords and per-node ACLs; a SuperLink with TLS and node authentication; the TUF
repository; the collector) and three ``edgeai agent run`` with different device profiles,
each with its own MNIST shard, node key, broker account and ports. Agents find the server
over mDNS (a service type unique to this demo, bound to 127.0.0.1). The run trains with
DP-SGD; its last checkpoint is released, compiled per profile, rolled out in waves, and
served. The demo ends when every agent serves the release.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

from edgeai.plumbing.processes import free_port, terminate_all, wait_until
from edgeai.server.collector import NodeState

PROFILES = ("x86-64-avx2", "rpi5", "jetson-orin-nano-8gb")
_POLL_S = 0.25  # how often the demo looks at its processes' files
SHARD = 2000  # training images per agent (3 agents: 6,000 of the 8,000 training images)


@dataclass
class AgentProc:
    """One agent of the demo: its files, ports and process."""

    node: str
    profile: str
    root: Path
    http_port: int
    grpc_port: int
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class Demo:
    """The demo's processes; use as a context manager (everything stops on exit)."""

    root: Path
    rounds: int = 3
    profiles: tuple[str, ...] = PROFILES
    server: subprocess.Popen[bytes] | None = None
    agents: list[AgentProc] = field(default_factory=list)
    service_type: str = ""
    agent_type: str = ""
    env: dict[str, str] = field(default_factory=dict)
    dashboard_port: int = 0  # the server's read-only dashboard (chosen in __post_init__)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.dashboard_port = self.dashboard_port or free_port()
        tag = secrets.token_hex(3)  # DNS-SD service names: at most 15 characters after "_"
        self.service_type = f"_edgeai-{tag}._tcp.local."
        self.agent_type = f"_edgeaiag-{tag}._tcp.local."
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
        }

    @property
    def discovery(self) -> dict[str, Any]:
        """The ``[discovery]`` table server and agents share: loopback, this demo's types."""
        return {
            "server_type": self.service_type,
            "agent_type": self.agent_type,
            "interfaces": ["127.0.0.1"],
            "ip_version": "v4",
            "fleet": "demo",
        }

    # -- files -------------------------------------------------------------------------------

    @property
    def dashboard_url(self) -> str:
        """The page `edgeai server run` serves for this demo (docs/DASHBOARD.md)."""
        return f"http://127.0.0.1:{self.dashboard_port}/"

    @property
    def server_dir(self) -> Path:
        """The server's state directory."""
        return self.root / "server"

    def prepare(self) -> None:
        """Write data shards, keys, certificates and every config file."""
        from edgeai.data import load_dataset  # noqa: PLC0415
        from edgeai.plumbing.pki import (  # noqa: PLC0415
            generate_node_key,
            issue,
            make_ca,
        )

        split = load_dataset("mnist")
        pixels = np.round(split.train.x[:, 0] * 255).astype(np.uint8)
        tls = self.server_dir / "tls"
        ca = make_ca(tls / "ca")
        link = issue(ca, "superlink", ["127.0.0.1", "localhost"], tls / "superlink")
        val = split.validation
        calibration = self.server_dir / "calibration.npz"
        np.savez(calibration, X=np.round(val.x[:1000, 0] * 255).astype(np.uint8), y=val.y[:1000])
        (self.server_dir / "experiment.toml").write_text(
            _experiment(self.rounds, len(self.profiles)), encoding="utf-8"
        )
        (self.server_dir / "federation.toml").write_text(
            _federation(self, link.cert, link.key, ca.cert), encoding="utf-8"
        )
        for i, profile in enumerate(self.profiles):
            node = f"demo-{profile}"
            agent = AgentProc(node, profile, self.root / node, free_port(), free_port())
            agent.root.mkdir(parents=True, exist_ok=True)
            part = slice(i * SHARD, (i + 1) * SHARD)
            np.savez(agent.root / "data.npz", X=pixels[part], y=split.train.y[part])
            generate_node_key(agent.root / "node_key", node)
            self.agents.append(agent)

    # -- processes ---------------------------------------------------------------------------

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "edgeai.cli", *argv],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env=self.env,
        )

    def start(self, deadline_s: float = 120.0) -> None:
        """Start the server, enroll the agents (keys and broker accounts), start them."""
        config = self.server_dir / "federation.toml"
        for agent in self.agents:
            creds = self._cli(["server", "add-node", agent.node, "-c", str(config)])
            (agent.root / "telemetry.toml").write_text(creds, encoding="utf-8")
        self.server = self._spawn(["server", "run", "-c", str(config)], self.root / "server.log")
        wait_until(
            (self.server_dir / "status.json").is_file,
            deadline_s,
            "the server",
            poll_s=_POLL_S,
            check=self._check_server,
        )
        for agent in self.agents:
            self._cli(
                [
                    "server",
                    "enroll",
                    str(agent.root / "node_key.pub"),
                    "-c",
                    str(config),
                    "--name",
                    agent.node,
                ]
            )
            _write_agent_config(self, agent)
            agent.proc = self._spawn(
                ["agent", "run", "-c", str(agent.root / "agent.toml")], agent.root / "agent.log"
            )

    def _cli(self, argv: list[str]) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "edgeai.cli", *argv],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"edgeai {' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def _check_server(self) -> None:
        if self.server is not None and self.server.poll() is not None:
            tail = (self.root / "server.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the server exited ({self.server.returncode}):\n{tail}")

    def status(self) -> dict[str, Any] | None:
        """The server's status.json."""
        from edgeai.server.daemon import read_server_status  # noqa: PLC0415

        return read_server_status(self.server_dir)

    def fleet(self) -> list[NodeState]:
        """The collector's view of the fleet."""
        from edgeai.server.collector import StoreError, open_readonly  # noqa: PLC0415

        db = self.server_dir / "fleet.sqlite"
        if not db.is_file():
            return []
        try:
            return list(open_readonly(db).nodes())
        except StoreError:
            return []

    def released(self) -> int | None:
        """The release every profile serves (promoted), once there is one for all."""
        status = self.status() or {}
        serving = ((status.get("releases") or {}).get("serving")) or {}
        numbers = {serving.get(p) for p in self.profiles}
        return numbers.pop() if len(numbers) == 1 and None not in numbers else None

    def done(self) -> bool:
        """Every agent online and serving the release."""
        release = self.released()
        nodes = {n.node: n for n in self.fleet()}
        return release is not None and all(
            a.node in nodes and nodes[a.node].online and nodes[a.node].release == release
            for a in self.agents
        )

    def serve_requests(self, count: int = 20, timeout_s: float = 60.0) -> None:
        """Send ``count`` KServe v2 REST inferences to each agent, then wait for their p95.

        The fleet view reports a node's p95 once its telemetry carries one: an agent that
        has served nothing has none to report.
        """
        import urllib.request  # noqa: PLC0415

        from edgeai.artifacts import ModelStore  # noqa: PLC0415

        x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
        for agent in self.agents:
            active = ModelStore(agent.root / "state" / "models").active()
            if active is None:
                raise RuntimeError(f"agent {agent.node} serves no model")
            manifest = json.loads((active.path / "manifest.json").read_text(encoding="utf-8"))
            name, tensor = manifest["model"]["name"], manifest["inputs"][0]
            row = {"name": tensor["name"], "shape": list(x.shape), "datatype": "FP32"}
            body = json.dumps({"inputs": [{**row, "data": x.ravel().tolist()}]})
            url = f"http://127.0.0.1:{agent.http_port}/v2/models/{name}/infer"
            for _ in range(count):
                request = urllib.request.Request(url, body.encode(), method="POST")
                with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310 (loopback)
                    reply.read()
        nodes = {a.node for a in self.agents}
        wait_until(
            lambda: {n.node for n in self.fleet() if n.p95_ms is not None} >= nodes,
            timeout_s,
            "every agent's p95 in the fleet view",
            poll_s=_POLL_S,
            check=self.wait_alive,
        )

    def wait_alive(self) -> None:
        """Raise with the log's tail if the server or an agent exited."""
        self._check_server()
        for agent in self.agents:
            if agent.proc is not None and agent.proc.poll() is not None:
                tail = (agent.root / "agent.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"agent {agent.node} exited:\n{tail}")

    def wait(self, timeout_s: float, on_tick: Callable[[], None] | None = None) -> None:
        """Wait until :meth:`done`, checking that no process died."""

        def check() -> None:
            self.wait_alive()
            if on_tick is not None:
                on_tick()

        wait_until(
            self.done, timeout_s, "every agent to serve the release", poll_s=_POLL_S, check=check
        )

    def stop(self) -> None:
        """SIGTERM everything, agents first; SIGKILL what does not stop in 30 s."""
        terminate_all([*(a.proc for a in self.agents), self.server], grace_s=30)

    def __enter__(self) -> Demo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _experiment(rounds: int, nodes: int) -> str:
    return tomli_w.dumps(
        {
            "name": "demo",
            "seed": 0,
            "model": {"name": "dp-cnn-tiny"},
            "data": {"dataset": "mnist"},
            "federation": {"num_clients": nodes, "rounds": rounds, "round_timeout_s": 120},
            "training": {"local_epochs": 2, "batch_size": 64, "learning_rate": 2.0},
            "privacy": {
                "enabled": True,
                "target_epsilon": 8.0,
                "delta": 1e-5,
                "max_grad_norm": 1.0,
            },
        }
    )


def _federation(demo: Demo, cert: Path, key: Path, ca: Path) -> str:
    s = demo.server_dir
    return tomli_w.dumps(
        {
            "fleet": "demo",
            "state_dir": str(s),
            "metrics_port": 0,
            "superlink": {
                "host": "127.0.0.1",
                "port": free_port(),
                "database": "superlink.db",
                "ssl_certfile": str(cert),
                "ssl_keyfile": str(key),
                "ssl_ca_certfile": str(ca),
                "node_auth": True,
            },
            "broker": {
                "manage": True,
                "host": "127.0.0.1",
                "port": free_port(),
                "tls": True,
                "data_dir": "broker",
            },
            "artifacts": {"repository": "tuf", "host": "127.0.0.1", "port": free_port()},
            "collector": {"db_path": "fleet.sqlite", "offline_after_s": 60},
            "releases": {
                "state_dir": "releases",
                "calibration": str(s / "calibration.npz"),
                "ack_timeout_s": 300,
                "compile_options": {"calibration_samples": 200, "eval_samples": 500},
            },
            "dashboard": {"port": demo.dashboard_port},
            "discovery": demo.discovery,
            "run": {
                "experiment": "experiment.toml",
                "min_nodes": len(demo.profiles),
                "node_wait_s": 300,
            },
        }
    )


def _write_agent_config(demo: Demo, agent: AgentProc) -> None:
    ca = demo.server_dir / "tls" / "ca" / "ca.pem"
    # What `edgeai server add-node` printed: the [telemetry] table with the broker account.
    telemetry = tomllib.loads((agent.root / "telemetry.toml").read_text(encoding="utf-8"))
    config = {
        "node": agent.node,
        "profile": agent.profile,
        "state_dir": "state",
        "data": "data.npz",
        "metrics_interval_s": 2,
        "federation": {
            "root_certificates": str(ca),
            "auth_private_key": "node_key",
            "runtime_port": free_port(),
            "restart_initial_s": 1,
            "restart_max_s": 5,
        },
        "updates": {
            "trusted_root": str(demo.server_dir / "tuf" / "metadata" / "1.root.json"),
            "interval_s": 2,
        },
        "serving": {"grpc_port": agent.grpc_port, "http_port": agent.http_port},
        "discovery": {**demo.discovery, "requery_interval_s": 2},
        **telemetry,
    }
    (agent.root / "agent.toml").write_text(tomli_w.dumps(config), encoding="utf-8")


def write_fleet_json(demo: Demo, out: Path) -> Path:
    """``DIR/fleet.json``: the ``fleet status --json`` rows of this moment."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "fleet.json"
    rows = [n.as_json() for n in demo.fleet()]
    path.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return path
