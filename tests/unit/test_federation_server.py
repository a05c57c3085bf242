"""The server's wiring and run policy, with its parts replaced by their in-memory twins.

The SuperLink's Control API is a ``MemoryRuns``, the broker link a ``MemorySubscriber`` and a
``MemoryTransport``, the zeroconf advert a ``MemoryAdvert`` on a ``MemoryLan``: no process,
socket or private method is patched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgeai.discovery import MemoryAdvert, MemoryDiscovery, MemoryLan
from edgeai.flower.runspec import write_status
from edgeai.server.collector import MemorySubscriber
from edgeai.server.config import load_server_config
from edgeai.server.daemon import FederationServer
from edgeai.server.superlink import MemoryRuns, RunStatus
from edgeai.telemetry import MemoryTransport
from tests.support.clock import FakeClock
from tests.unit.test_releases import X86, Harness, loop_checkpoint

EXPERIMENT = Path(__file__).parents[2] / "simulations" / "quickstart.toml"


@dataclass
class IdleSuperLink:
    """The SuperLink's process, minus the process."""

    running: bool = False

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False


@dataclass
class Parts:
    server: FederationServer
    runs: MemoryRuns
    lan: MemoryLan
    link: MemoryTransport
    superlink: IdleSuperLink


def config_file(root: Path) -> Path:
    path = root / "federation.toml"
    path.write_text(
        'fleet = "lab"\nstate_dir = "s"\nmetrics_port = 0\n'
        '[superlink]\ninsecure = true\nnode_auth = false\ndatabase = "l.db"\n'
        '[broker]\nmanage = false\nurl = "mqtt://127.0.0.1:1883"\n[artifacts]\nport = 0\n'
        '[releases]\nstate_dir = "r"\ncalibration = "c"\n'
        f"[run]\nexperiment = {json.dumps(str(EXPERIMENT))}\nrounds = 2\n"
    )
    return path


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    runs, lan, link, superlink = MemoryRuns(), MemoryLan(), MemoryTransport(), IdleSuperLink()
    srv = FederationServer(
        load_server_config(config_file(tmp_path)),
        subscriber=MemorySubscriber(),
        superlink=superlink,
        runs=runs,
        advert=MemoryAdvert(lan),
        announcer_transport=link,
        clock=FakeClock(1_000.0),
    )
    srv.start()
    try:
        yield Parts(srv, runs, lan, link, superlink)
    finally:
        srv.stop()


def test_the_server_starts_its_parts_submits_the_run_and_advertises_the_repository(
    parts: Parts,
) -> None:
    srv = parts.server
    [spec] = parts.runs.submitted
    assert (spec.experiment.federation.rounds, spec.out_dir) == (2, srv.run_paths.root)
    assert srv.run_id == 1
    assert parts.superlink.running
    assert parts.link.is_connected()
    lan = MemoryDiscovery(parts.lan, fleet="lab")
    lan.start()
    found = lan.find_server(0.0)
    assert found is not None
    assert (found.artifact_url, found.superlink) == (srv.artifact_url, srv.config.superlink.address)
    written = json.loads((srv.state / "status.json").read_text())
    assert (written["ts"], written["run"]["id"], written["artifact_url"]) == (
        1_000.0,
        1,
        srv.artifact_url,
    )


def test_stop_closes_every_part_it_was_given(parts: Parts) -> None:
    parts.server.stop()
    assert not parts.superlink.running
    assert not parts.link.is_connected()
    lan = MemoryDiscovery(parts.lan)
    lan.start()
    assert lan.servers() == []


# A SuperLink killed while the ServerApp waited for nodes to come back (seen in the fleet
# end to end under load) cut the run off as much as one killed mid-round.
@pytest.mark.parametrize("state", ["starting", "waiting-for-nodes", "running"])
def test_a_run_cut_off_mid_round_is_resubmitted_a_bounded_number_of_times(
    parts: Parts, state: str
) -> None:
    srv, runs = parts.server, parts.runs
    for _ in range(FederationServer.MAX_RESUBMITS + 2):
        write_status(srv.run_paths, state, round=2)  # the ServerApp died with the SuperLink
        assert srv.run_id is not None
        runs.finish(srv.run_id, "failed", "Task failed with unknown error.")
        srv.tick()
    assert len(runs.submitted) == 1 + FederationServer.MAX_RESUBMITS


def test_a_run_that_failed_for_a_reason_is_not_resubmitted_but_alerted_once(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    srv, runs = parts.server, parts.runs
    write_status(srv.run_paths, "failed", reason="1 of 3 nodes connected after 300 s")
    runs.finish(1, "failed")
    with caplog.at_level(logging.ERROR, logger="edgeai.server.daemon"):
        for _ in range(3):
            srv.tick()
    assert len(runs.submitted) == 1
    alerts = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert alerts == ["run 1 ended failed: 1 of 3 nodes connected after 300 s"]


@pytest.mark.parametrize("sub_status", ["completed", "stopped"])
def test_completed_and_stopped_runs_are_left_alone(parts: Parts, sub_status: str) -> None:
    parts.runs.finish(1, sub_status)
    parts.server.tick()
    assert parts.server.run_status == RunStatus(1, "finished", sub_status, "")
    assert len(parts.runs.submitted) == 1


def test_a_superlink_that_cannot_be_reached_is_retried_on_the_next_tick(parts: Parts) -> None:
    parts.runs.reachable = False
    parts.server.tick()
    parts.runs.reachable = True
    parts.runs.finish(1, "completed")
    parts.server.tick()
    assert parts.server.run_status is not None
    assert parts.server.run_status.ok


def test_the_server_proposes_the_loops_checkpoints_and_the_gate_refuses_a_worse_one(
    parts: Parts, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    srv = parts.server
    h = Harness(tmp_path / "releases", accuracy_margin=0.01)
    h.fleet.add("a1", X86)
    srv.releases = h.manager  # a fake compiler and fleet behind the real release manager
    checkpoints = srv.run_paths.checkpoints
    loop_checkpoint(checkpoints, 1, 0.80)
    parts.runs.finish(1, "completed")
    with caplog.at_level(logging.INFO, logger="edgeai.server.releases.manager"):
        srv.tick()  # the last checkpoint of a completed run is due
        [release] = h.manager.releases()
        assert (release.round, release.accuracy) == (1, 0.80)
        h.fleet.report("a1", 1)
        srv.tick()
        loop_checkpoint(checkpoints, 2, 0.75)  # a resumed run's last round: worse by 0.05
        srv.tick()
    assert [r.release for r in h.manager.releases()] == [1]
    logged = [r.getMessage() for r in caplog.records]
    assert "checkpoint of round 1 (accuracy 0.8000): released" in logged
    assert "checkpoint of round 2 (accuracy 0.7500): not released" in logged
