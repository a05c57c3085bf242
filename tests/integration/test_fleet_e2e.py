"""The whole loop on a loopback fleet: every process real, nothing mocked.

`edgeai server run` (Mosquitto with TLS and per-node ACLs, a SuperLink with TLS and node
authentication, the TUF repository, the collector) and three `edgeai agent run` with the
x86, Raspberry Pi 5 and Jetson Orin Nano profiles, which find the server over mDNS on
127.0.0.1 (a service type unique to this run). Three rounds of FedAvg with DP-SGD; the
final checkpoint is compiled per profile, signed, rolled out and served; the stock
tritonclient gets the released model's predictions from each agent.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from edgeai.artifacts import ModelStore
from edgeai.server.demo import Demo

pytestmark = [pytest.mark.integration, pytest.mark.slow]
PROBE = Path(__file__).with_name("triton_probe.py")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    demo = Demo(tmp_path_factory.mktemp("fleet"), rounds=3)
    with demo:
        demo.prepare()
        demo.start()
        demo.wait(600)
        yield demo


def test_every_agent_serves_the_release_and_fleet_status_shows_it(fleet: Demo) -> None:
    release = fleet.released()
    assert release is not None
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeai.cli",
            "fleet",
            "status",
            "--json",
            "--db",
            str(fleet.server_dir / "fleet.sqlite"),
        ],
        capture_output=True,
        text=True,
        env=fleet.env,
        timeout=60,
        check=True,
    )
    rows = {row["node"]: row for row in json.loads(done.stdout)}
    assert set(rows) == {a.node for a in fleet.agents}
    for agent in fleet.agents:
        row = rows[agent.node]
        assert (row["profile"], row["online"], row["release"]) == (agent.profile, True, release)
        assert row["last_round"] == 3
        assert 0 < row["epsilon"] <= 8.0 + 1e-9  # the experiment's target ε
    status = fleet.status() or {}
    rounds = status["run"]["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(r["accepted"] == 3 and r["rejected"] == 0 for r in rounds)
    assert rounds[-1]["epsilon"] <= 8.0 + 1e-9
    # The release was gated at the accuracy its round measured (never a default 0.0).
    [served] = [r for r in status["releases"]["releases"] if r["release"] == release]
    assert served["accuracy"] == pytest.approx(rounds[served["round"] - 1]["accuracy"])
    assert served["accuracy"] > 0.0


def test_tritonclient_gets_the_released_model_from_each_agent(fleet: Demo, tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((3, 1, 28, 28), dtype=np.float32)
    inputs = tmp_path / "x.npz"
    np.savez(inputs, x=x)
    for agent in fleet.agents:
        active = ModelStore(agent.root / "state" / "models").active()
        assert active is not None
        assert active.release == fleet.released()
        manifest = json.loads((active.path / "manifest.json").read_text())
        assert manifest["profile"] == agent.profile
        session = ort.InferenceSession(str(active.path / "model.onnx"))
        (expected,) = session.run(None, {session.get_inputs()[0].name: x})
        done = subprocess.run(
            [
                sys.executable,
                str(PROBE),
                f"127.0.0.1:{agent.grpc_port}",
                f"127.0.0.1:{agent.http_port}",
                manifest["model"]["name"],
                str(inputs),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        answer = json.loads(done.stdout)
        assert answer["grpc_version"] == answer["http_version"] == manifest["model"]["version"]
        np.testing.assert_allclose(answer["grpc_outputs"], expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(answer["http_outputs"], expected, rtol=1e-4, atol=1e-4)


def test_the_jetson_agent_falls_back_to_the_cpu_and_says_why(fleet: Demo) -> None:
    (jetson,) = [a for a in fleet.agents if a.profile.startswith("jetson")]
    log = (jetson.root / "agent.log").read_text()
    events = [json.loads(line)["msg"] for line in log.splitlines() if "provider_fallback" in line]
    assert events, "no provider_fallback event"
    detail = json.loads(events[-1].split(" ", 1)[1])
    assert detail["provider"] == "CPUExecutionProvider"
    assert any(r.startswith("TensorrtExecutionProvider:") for r in detail["reasons"])
    assert any(r.startswith("CUDAExecutionProvider:") for r in detail["reasons"])


def test_agents_found_the_server_over_mdns(fleet: Demo) -> None:
    for agent in fleet.agents:
        config = (agent.root / "agent.toml").read_text()
        assert "superlink =" not in config
        assert "repository_url" not in config
        assert '"msg": "server_found' in (agent.root / "agent.log").read_text()


def test_a_superlink_killed_mid_run_is_restarted_and_the_run_resumes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """kill -9 the SuperLink after round 2 of 4: it comes back (with its database), the
    agents reconnect, the server resubmits the run, which resumes from its checkpoint."""
    import psutil  # noqa: PLC0415

    with Demo(tmp_path_factory.mktemp("restart"), rounds=4) as demo:
        demo.prepare()
        demo.start()
        paths = demo.server_dir / "run" / "checkpoints"
        deadline = time.monotonic() + 300
        while not (paths / "round-0002.npz").exists():
            assert time.monotonic() < deadline, "no checkpoint of round 2"
            demo.wait_alive()
            time.sleep(0.5)
        assert demo.server is not None
        (link,) = [
            p
            for p in psutil.Process(demo.server.pid).children(recursive=True)
            if any("flower-superlink" in part for part in p.cmdline())
        ]
        link.kill()
        demo.wait(600)
        rounds = (demo.status() or {})["run"]["rounds"]
        runs = [r["run_id"] for r in rounds]
    assert [r["round"] for r in rounds][-2:] == [3, 4]
    assert len(set(runs)) == 2, "round 3 and 4 should come from the resubmitted run"
    assert runs[0] != runs[-1]
    log = (demo.root / "server.log").read_text()
    assert "resubmitting" in log


def test_fleet_view_reports_p95_once_agents_served(fleet: Demo) -> None:
    fleet.serve_requests(count=10)
    rows = {n.node: n for n in fleet.fleet()}
    for agent in fleet.agents:
        assert rows[agent.node].p95_ms is not None
        assert rows[agent.node].p95_ms > 0
