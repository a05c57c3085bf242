"""The server's run policy: resume a run the SuperLink cut off; alert on one that failed."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edgeai.flower.runspec import write_status
from edgeai.server.config import load_server_config
from edgeai.server.daemon import FederationServer
from edgeai.server.superlink import RunStatus
from tests.unit.test_releases import X86, Harness, loop_checkpoint


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FederationServer, list[int]]:
    (tmp_path / "federation.toml").write_text(
        'state_dir = "s"\n[superlink]\ninsecure = true\nnode_auth = false\ndatabase = "l.db"\n'
        '[broker]\nmanage = true\ntls = false\n[releases]\nstate_dir = "r"\ncalibration = "c"\n'
        '[run]\nexperiment = "exp.toml"\n'
    )
    srv = FederationServer(load_server_config(tmp_path / "federation.toml"))
    submitted: list[int] = []
    monkeypatch.setattr(srv, "_submit", lambda: submitted.append(1))
    srv.run_paths.root.mkdir(parents=True)
    return srv, submitted


def test_a_run_cut_off_mid_round_is_resubmitted_a_bounded_number_of_times(
    server: tuple[FederationServer, list[int]],
) -> None:
    srv, submitted = server
    for _ in range(FederationServer.MAX_RESUBMITS + 2):
        write_status(srv.run_paths, "running", round=2)  # the ServerApp died mid-run
        srv.run_status = RunStatus(7, "finished", "failed", "Task failed with unknown error.")
        srv._resubmit_if_cut_off()
    assert len(submitted) == FederationServer.MAX_RESUBMITS


def test_a_run_that_failed_for_a_reason_is_not_resubmitted_but_alerted_once(
    server: tuple[FederationServer, list[int]], caplog: pytest.LogCaptureFixture
) -> None:
    srv, submitted = server
    write_status(srv.run_paths, "failed", reason="1 of 3 nodes connected after 300 s")
    srv.run_status = RunStatus(8, "finished", "failed", "")
    with caplog.at_level(logging.ERROR, logger="edgeai.server.daemon"):
        srv._resubmit_if_cut_off()
        srv._resubmit_if_cut_off()
    assert submitted == []
    alerts = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert alerts == ["run 8 ended failed: 1 of 3 nodes connected after 300 s"]


def test_completed_and_stopped_runs_are_left_alone(
    server: tuple[FederationServer, list[int]],
) -> None:
    srv, submitted = server
    for sub_status in ("completed", "stopped"):
        srv.run_status = RunStatus(9, "finished", sub_status, "")
        srv._resubmit_if_cut_off()
    assert submitted == []


def test_the_server_proposes_the_loops_checkpoints_and_the_gate_refuses_a_worse_one(
    server: tuple[FederationServer, list[int]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    srv, _ = server
    h = Harness(tmp_path / "releases", accuracy_margin=0.01)
    h.fleet.add("a1", X86)
    srv.releases = h.manager
    checkpoints = srv.run_paths.checkpoints
    loop_checkpoint(checkpoints, 1, 0.80)
    srv.run_status = RunStatus(7, "finished", "completed", "")
    with caplog.at_level(logging.INFO, logger="edgeai.server.releases.manager"):
        srv._propose_due()  # the last checkpoint of a completed run is due
        [release] = h.manager.releases()
        assert (release.round, release.accuracy) == (1, 0.80)
        h.fleet.report("a1", 1)
        h.manager.step()
        loop_checkpoint(checkpoints, 2, 0.75)  # a resumed run's last round: worse by 0.05
        srv._propose_due()
    assert [r.release for r in h.manager.releases()] == [1]
    logged = [r.getMessage() for r in caplog.records]
    assert "checkpoint of round 1 (accuracy 0.8000): released" in logged
    assert "checkpoint of round 2 (accuracy 0.7500): not released" in logged
