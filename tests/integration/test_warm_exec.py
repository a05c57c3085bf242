"""The warm SuperExec on a real loopback fleet: same results as Flower's, survives a kill.

A real SuperLink (TLS, node auth, database), SuperNodes with ``--isolation process``
and one ``python -m edgeai.agent.warm_exec`` per node, the real ClientApp with DP.
``WarmFleet`` is also the benchmark's harness (``bench/bench_fleet_round.py``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from edgeai.agent.warm_exec import READY_LINE
from edgeai.flower.runspec import RunSpec
from edgeai.plumbing.processes import find_executable
from edgeai.server.superlink import run_to_end, submit, write_app_dir
from edgeai.server.superlink.process import SUPEREXEC_POLL_ENV, flower_env
from tests.integration.test_federation_flower_fleet import (
    REPO,
    Fleet,
    experiment,
    make_shards,
    rounds_of,
    status_of,
)
from tests.mosquitto import free_port
from tests.support.waiting import wait_for_slow as wait_for

pytestmark = pytest.mark.integration


@dataclass
class WarmFleet(Fleet):
    """A :class:`Fleet` whose SuperNodes run their ClientApps through a warm SuperExec."""

    ports: dict[str, int] = field(default_factory=dict)
    warm: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def _env(self, name: str) -> dict[str, str]:
        home = self.nodes[name].log.parent
        return flower_env(home / "flwr-home", {"PYTHONPATH": str(REPO), SUPEREXEC_POLL_ENV: "0.1"})

    def start_node(self, name: str) -> None:
        """(Re)start the node's SuperNode in process isolation, then its warm SuperExec."""
        node = self.nodes[name]
        port = self.ports.setdefault(name, free_port())
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
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--isolation",
            "process",
        ]
        with node.log.open("ab") as out:
            node.proc = subprocess.Popen(
                argv,
                env=self._env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.start_warm(name)

    def warm_log(self, name: str) -> Path:
        """The node's warm SuperExec log."""
        return self.nodes[name].log.parent / "warm-exec.log"

    def start_warm(self, name: str) -> subprocess.Popen[bytes]:
        """Start the node's warm SuperExec (returns before it is ready)."""
        argv = [
            sys.executable,
            "-m",
            "edgeai.agent.warm_exec",
            "--runtime-api-address",
            f"127.0.0.1:{self.ports[name]}",
            "--insecure",
            "--poll-s",
            "0.1",
        ]
        log = self.warm_log(name)
        with log.open("ab") as out:
            proc = subprocess.Popen(
                argv,
                env=self._env(name),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.warm[name] = proc
        return proc

    def warm_ready(self, name: str, starts: int = 1) -> bool:
        """True once the node's warm SuperExec has logged readiness ``starts`` times."""
        log = self.warm_log(name)
        return log.exists() and log.read_text(errors="replace").count(READY_LINE) >= starts

    def kill_warm(self, name: str) -> None:
        """SIGKILL only the warm SuperExec (its ClientApps notice and stop themselves)."""
        proc = self.warm[name]
        proc.kill()
        proc.wait(10)

    def stop(self) -> None:
        """Stop the warm SuperExecs (SIGTERM: they end their children), then the rest."""
        for proc in self.warm.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.warm.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        super().stop()


def zombies_of(pid: int) -> list[int]:
    """Pids of ``pid``'s zombie children."""
    try:
        children = psutil.Process(pid).children()
    except psutil.NoSuchProcess:
        return []
    return [c.pid for c in children if c.status() == psutil.STATUS_ZOMBIE]


def running_children(pid: int) -> list[psutil.Process]:
    """``pid``'s children that are still running (not zombies)."""
    return [c for c in psutil.Process(pid).children() if c.status() != psutil.STATUS_ZOMBIE]


def start_fleet(root: Path, nodes: int, warm: bool) -> Fleet:
    """A fleet of ``nodes`` enrolled SuperNodes (warm or Flower's executor), all online."""
    shards = make_shards(root / "data", nodes)
    fleet = (WarmFleet if warm else Fleet).start(root / "fed")
    try:
        for i in range(nodes):
            fleet.add_node(f"n{i}", shards[i])
        wait_for(lambda: len(fleet.online()) == nodes, 60, "nodes online")
        if isinstance(fleet, WarmFleet):
            for name in fleet.nodes:
                wait_for(lambda name=name: fleet.warm_ready(name), 60, f"{name} warm SuperExec")
    except BaseException:
        fleet.stop()
        raise
    return fleet


def dp_rounds(root: Path, warm: bool, rounds: int = 2) -> list[dict[str, object]]:
    """Run ``rounds`` DP rounds on 2 nodes; the rounds.jsonl lines."""
    fleet = start_fleet(root, 2, warm)
    try:
        spec = RunSpec(experiment=experiment(rounds, 2), out_dir=root / "run", node_wait_s=60)
        run_to_end(fleet.conn, spec, write_app_dir(root / "flwr-home"), timeout_s=300)
        if isinstance(fleet, WarmFleet):
            for proc in fleet.warm.values():
                wait_for(lambda proc=proc: not zombies_of(proc.pid), 5, "children reaped")
                assert proc.poll() is None, "the warm SuperExec must outlive its tasks"
    finally:
        fleet.stop()
    return rounds_of(spec)


@pytest.mark.slow
def test_warm_gives_the_same_dp_rounds_as_flowers_executor(tmp_path: Path) -> None:
    """Same data, seed and plan through both executors: the same rounds (timings: bench/)."""
    warm = dp_rounds(tmp_path / "warm", warm=True)
    cold = dp_rounds(tmp_path / "cold", warm=False)
    assert [r["round"] for r in warm] == [r["round"] for r in cold] == [1, 2]
    for w, c in zip(warm, cold, strict=True):
        assert w["accepted"] == c["accepted"] == 2
        assert w["rejected"] == w["failed"] == w["missing"] == 0
        # DP-SGD is seeded per (seed, round, node): the same training, so the same model.
        assert w["accuracy"] == pytest.approx(c["accuracy"], abs=1e-6)
        assert w["loss"] == pytest.approx(c["loss"], rel=1e-5)
        assert w["epsilon"] == pytest.approx(c["epsilon"], rel=1e-9)


def test_warm_superexec_killed_mid_round_then_restarted(tmp_path: Path) -> None:
    """SIGKILL one node's warm SuperExec while its ClientApp trains, restart it: the orphan
    still replies, every round gets both replies, and nothing is left as a zombie."""
    fleet = start_fleet(tmp_path, 2, warm=True)
    assert isinstance(fleet, WarmFleet)
    try:
        spec = RunSpec(
            experiment=experiment(3, 2, round_timeout_s=60.0),
            out_dir=tmp_path / "run",
            node_wait_s=60,
        )
        submit(fleet.conn, spec, write_app_dir(tmp_path / "flwr-home"))
        victim = fleet.warm["n0"]
        wait_for(lambda: len(rounds_of(spec)) >= 1, 120, "round 1")
        # Round 2: the victim has forked a ClientApp for it; kill the parent under it.
        orphans = wait_for(lambda: running_children(victim.pid), 60, "a ClientApp")
        fleet.kill_warm("n0")
        fleet.start_warm("n0")
        wait_for(lambda: fleet.warm_ready("n0", starts=2), 60, "restarted warm SuperExec")
        wait_for(lambda: status_of(spec).get("state") in {"finished", "failed"}, 300, "run end")
        assert status_of(spec)["state"] == "finished", status_of(spec)
        rounds = rounds_of(spec)
        assert [r["round"] for r in rounds] == [1, 2, 3]
        assert [(r["accepted"], r["missing"]) for r in rounds] == [(2, 0)] * 3, rounds
        # The orphan finished its task and was reaped by init; no zombie anywhere.
        wait_for(lambda: not any(_alive(p) for p in orphans), 30, "the orphan reaped")
        for proc in fleet.warm.values():
            wait_for(lambda proc=proc: not zombies_of(proc.pid), 5, "children reaped")
    finally:
        fleet.stop()


def _alive(proc: psutil.Process) -> bool:
    """Running or a zombie (not yet reaped)."""
    try:
        return proc.is_running()
    except psutil.NoSuchProcess:
        return False
