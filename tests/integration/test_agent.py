"""The agent daemon end to end: real Mosquitto, a real TUF repository over HTTP, the real CLI.

One agent process is started with a factory bundle; releases are then signed into the
repository and the agent must apply the good ones, reject the tampered and the gate-failing
ones while it keeps serving, report all of it over MQTT, and drain on SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeai.artifacts import ArtifactRepository, ModelStore, serve
from tests.bundles import bundle_variant
from tests.http import throttled
from tests.mosquitto import Mosquitto, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

PROFILE = "x86-64-avx2"
FLEET = "t"
BIN = Path(sys.executable).parent
ENV = {
    **os.environ,
    "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # Flower starts flower-superexec
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
}


class Subscriber:
    """Every message under the fleet's prefix, decoded, in arrival order."""

    def __init__(self, url: str) -> None:
        import paho.mqtt.client as mqtt  # noqa: PLC0415

        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._lock = threading.Lock()
        port = int(url.rsplit(":", 1)[1])
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"edgeai/v1/{FLEET}/#", qos=1)
        self._client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self._lock:
            return [b["body"] for t, b, _ in self.messages if t.endswith(f"/events/{kind}")]

    def topics(self) -> set[str]:
        with self._lock:
            return {t for t, _, _ in self.messages}

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@pytest.fixture(scope="module")
def releases(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("releases")
    return {
        "factory": bundle_variant(tiny_bundle, base / "factory", "factory"),
        "r1": bundle_variant(tiny_bundle, base / "r1", "r1"),
        "r2": bundle_variant(tiny_bundle, base / "r2", "r2"),
        "bad": bundle_variant(tiny_bundle, base / "bad", "bad", golden_shift=1.0),
    }


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


def retained_status(broker: Mosquitto) -> dict[str, Any]:
    """The agent's retained status, as the stock `mosquitto_sub` sees it."""
    shown = subprocess.run(
        [
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-p",
            str(broker.port),
            "-C",
            "1",
            "-W",
            "10",
            "-t",
            f"edgeai/v1/{FLEET}/nodes/a1/status",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=20,
    )
    body: dict[str, Any] = json.loads(shown.stdout)
    return body


def rest(port: int, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
            raw = resp.read()
            return resp.status, json.loads(raw) if raw.startswith(b"{") else {"text": raw.decode()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except OSError:
        return 0, {}


def infer(port: int, x: np.ndarray[Any, Any]) -> tuple[int, dict[str, Any]]:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ]
    }
    return rest(port, "/v2/models/model/infer", body)


def write_config(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def serve_only(root: Path, bundle: Path, http_port: int) -> Path:
    """An agent that only serves ``bundle``: no federation, updates, broker or mDNS."""
    return write_config(
        root,
        f'node = "solo"\nprofile = "{PROFILE}"\nstate_dir = "s"\nbundle = "{bundle}"\n'
        "discovery = false\n[federation]\nenabled = false\n"
        f"[serving]\ngrpc_port = 0\nhttp_port = {http_port}\n",
    )


def start_agent(config: Path) -> subprocess.Popen[bytes]:
    log = (config.parent / "agent.log").open("wb")
    return subprocess.Popen(
        [sys.executable, "-m", "edgeai.cli", "agent", "run", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=ENV,
    )


def stop_agent(proc: subprocess.Popen[bytes], timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    return int(proc.returncode)


def test_agent_applies_good_releases_rejects_bad_ones_and_reports(
    tmp_path: Path, broker: Mosquitto, releases: dict[str, Path]
) -> None:
    repo = ArtifactRepository.create(tmp_path / "repo")
    http = free_port()
    x = np.random.default_rng(0).random((2, 1, 28, 28), dtype=np.float32)
    with serve(repo.path) as server:
        config = write_config(
            tmp_path / "agent",
            f"""
node = "a1"
profile = "{PROFILE}"
state_dir = "state"
bundle = "{releases["factory"]}"
metrics_interval_s = 0.5
discovery = false
[federation]
enabled = false
[updates]
repository_url = "{server.url}"
trusted_root = "{repo.root_path}"
interval_s = 0.3
[serving]
grpc_port = {free_port()}
http_port = {http}
[telemetry]
broker_url = "{broker.url}"
fleet = "{FLEET}"
""",
        )
        sub = Subscriber(broker.url)
        agent = start_agent(config)
        try:
            wait_for(lambda: rest(http, "/v2/health/ready")[0] == 200, 60, "the agent to serve")
            status, body = infer(http, x)
            assert (status, body["model_version"]) == (200, "factory")

            # A good release is applied while requests keep flowing: none fails.
            results: list[tuple[int, str | None]] = []
            stop = threading.Event()

            def load() -> None:
                while not stop.is_set():
                    code, out = infer(http, x)
                    results.append((code, out.get("model_version")))

            loader = threading.Thread(target=load)
            loader.start()
            repo.add_release(PROFILE, releases["r1"], 1)
            wait_for(
                lambda: (
                    sub.events("model_applied")[-1:]
                    and sub.events("model_applied")[-1]["release"] == 1
                ),
                60,
                "release 1",
            )
            wait_for(lambda: results and results[-1][1] == "r1", 10, "r1 to be served")
            stop.set()
            loader.join()
            assert {code for code, _ in results} == {200}
            assert {v for _, v in results} <= {"factory", "r1"}

            # A tampered file on the server: rejected, r1 keeps serving, reported once.
            repo.add_release(PROFILE, releases["r2"], 2)
            (model,) = (repo.path / "targets" / PROFILE / "2").glob("*.model.onnx")
            model.write_bytes(model.read_bytes()[:-8] + b"tampered")
            wait_for(lambda: sub.events("model_rejected"), 30, "the rejection")
            assert sub.events("model_rejected")[0]["reason"] == "tampered"
            assert infer(http, x)[1]["model_version"] == "r1"

            # A validly signed release that fails the on-device gate: rolled back, reported.
            repo.add_release(PROFILE, releases["bad"], 3)
            wait_for(lambda: sub.events("rollback"), 30, "the rollback")
            assert any(e["reason"] == "gate" for e in sub.events("model_rejected"))
            time.sleep(1.0)  # several update intervals: a known-bad release is not retried
            assert [e["reason"] for e in sub.events("model_rejected")].count("gate") == 1
            assert len([e for e in sub.events("model_rejected") if e["reason"] == "tampered"]) == 1
            assert infer(http, x)[1]["model_version"] == "r1"

            # Metrics reach MQTT and /metrics; the CLI subscriber sees the retained status.
            wait_for(lambda: f"edgeai/v1/{FLEET}/nodes/a1/telemetry" in sub.topics(), 10)
            metrics = [b for t, b, _ in sub.messages if t.endswith("/telemetry")][-1]["body"]
            assert metrics["metrics"]["release"] == 1
            assert metrics["metrics"]["inference_count"] > 0
            status, text = rest(http, "/metrics")
            assert "edgeai_agent_release 1.0" in text["text"]
            retained = retained_status(broker)
            assert (retained["body"]["state"], retained["body"]["release"]) == ("online", 1)
        finally:
            code = stop_agent(agent)
            sub.close()
        assert code == 0, (config.parent / "agent.log").read_text()[-3000:]
        log = (config.parent / "agent.log").read_text()
        assert '"msg": "agent_stopping' in log
        # The outbox was flushed: the retained status says "stopped".
        assert retained_status(broker)["body"]["state"] == "stopped"


def test_agent_keeps_its_supernode_running(
    tmp_path: Path, releases: dict[str, Path], tiny_model: tuple[Path, Path]
) -> None:
    """A real SuperLink; the agent's SuperNode registers, is killed, comes back."""
    # One port: SuperLink 1.42 serves its Fleet, Control and Runtime APIs over HTTP together.
    port = free_port()
    db = tmp_path / "superlink.db"
    link = subprocess.Popen(
        [
            str(BIN / "flower-superlink"),
            "--insecure",
            "--database",
            str(db),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    _, calibration = tiny_model
    config = write_config(
        tmp_path / "agent",
        f"""
node = "fed-1"
profile = "{PROFILE}"
state_dir = "state"
data = "{calibration}"
bundle = "{releases["factory"]}"
discovery = false
[federation]
superlink = "127.0.0.1:{port}"
insecure = true
runtime_port = {free_port()}
restart_initial_s = 0.2
[serving]
grpc_port = 0
http_port = 0
""",
    )
    agent = start_agent(config)
    log = config.parent / "agent.log"

    def online_nodes() -> list[int]:
        if not db.exists():
            return []
        with sqlite3.connect(db) as conn:
            try:
                rows = conn.execute("SELECT node_id FROM node WHERE status = 'online'").fetchall()
            except sqlite3.OperationalError:  # the SuperLink has not created its tables yet
                return []
        return [r[0] for r in rows]

    def starts(process: str) -> list[dict[str, Any]]:
        events = [
            json.loads(json.loads(line)["msg"].split(" ", 1)[1])
            for line in log.read_text().splitlines()
            if '"msg": "process_started' in line
        ]
        return [e for e in events if e["process"] == process]

    def supernode_starts() -> list[dict[str, Any]]:
        return starts("supernode")

    try:
        first = wait_for(online_nodes, 60, "the SuperNode to register")
        started = wait_for(supernode_starts, 10, "process_started")
        pid = started[0]["pid"]
        assert wait_for(lambda: starts("superexec"), 10, "the warm SuperExec")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: len(supernode_starts()) >= 2, 30, "the SuperNode to be restarted")
        again = wait_for(lambda: [n for n in online_nodes() if n not in first], 60, "re-register")
        assert again
        assert "killed by SIGKILL" in log.read_text()
        node_config = (config.parent / "state" / "node-config.toml").read_text()
        assert f'data-path = "{calibration}"' in node_config
    finally:
        code = stop_agent(agent)
        link.terminate()
        link.wait(10)
    assert code == 0, log.read_text()[-3000:]
    # The SuperNode went down with the agent.
    for child in (supernode_starts()[-1], starts("superexec")[-1]):
        with pytest.raises(ProcessLookupError):
            os.kill(child["pid"], 0)


def test_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, 'node = "x"\nprofile = "x86-64-avx2"\nmetrics_intervl_s = 3\n')
    done = subprocess.run(
        [sys.executable, "-m", "edgeai.cli", "agent", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "metrics_intervl_s" in done.stderr
    assert "did you mean 'metrics_interval_s'" in done.stderr


def test_taken_port_exits_3(tmp_path: Path, releases: dict[str, Path]) -> None:
    import socket  # noqa: PLC0415

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = serve_only(tmp_path, releases["factory"], port)
        done = subprocess.run(
            [sys.executable, "-m", "edgeai.cli", "agent", "run", "-c", str(config)],
            capture_output=True,
            text=True,
            env=ENV,
            timeout=60,
            check=False,
        )
    assert done.returncode == 3, done.stderr
    assert "cannot start" in done.stderr


def test_inference_only_agent_never_imports_torch(
    tmp_path: Path, releases: dict[str, Path]
) -> None:
    config = serve_only(tmp_path, releases["factory"], 0)
    probe = (
        "import sys, threading, asyncio\n"
        "from pathlib import Path\n"
        "from edgeai.agent.config import load_agent_config\n"
        "from edgeai.agent.daemon import Agent\n"
        "async def main():\n"
        f"    agent = Agent(load_agent_config(Path({str(config)!r})))\n"
        "    stop = asyncio.Event()\n"
        "    task = asyncio.create_task(agent.run(stop))\n"
        "    while agent.holder.current() is None or agent.server.http_port == 0:\n"
        "        await asyncio.sleep(0.05)\n"
        "    stop.set(); await task\n"
        "asyncio.run(main())\n"
        "print(sorted(m for m in ('torch', 'flwr', 'ray', 'opacus') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_agent_killed_mid_download_restarts_on_the_old_model_then_applies_the_new(
    tmp_path: Path, releases: dict[str, Path]
) -> None:
    repo = ArtifactRepository.create(tmp_path / "repo")
    repo.add_release(PROFILE, releases["r1"], 1)
    http = free_port()
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    with throttled(repo.path, chunk=1024, delay_s=0.05) as server:
        config = write_config(
            tmp_path / "agent",
            f"""
node = "k1"
profile = "{PROFILE}"
state_dir = "state"
bundle = "{releases["factory"]}"
discovery = false
[federation]
enabled = false
[updates]
repository_url = "{server.url}"
trusted_root = "{repo.root_path}"
interval_s = 0.3
[serving]
grpc_port = 0
http_port = {http}
""",
        )
        scratch = config.parent / "state" / "models" / "scratch"
        agent = start_agent(config)
        try:
            # SIGKILL while the release's files are arriving in the scratch directory.
            wait_for(lambda: any(p.is_file() for p in scratch.rglob("*")), 60, "a download")
            agent.kill()
            agent.wait(10)
        finally:
            if agent.poll() is None:
                agent.kill()
        store = ModelStore(config.parent / "state" / "models")
        active = store.active()
        assert active is not None
        assert (active.release, active.version) == (0, "factory")  # the old model, intact
        agent = start_agent(config)
        try:
            wait_for(lambda: rest(http, "/v2/health/ready")[0] == 200, 60, "serving again")
            assert infer(http, x)[1]["model_version"] in ("factory", "r1")  # never a mix
            wait_for(lambda: infer(http, x)[1].get("model_version") == "r1", 60, "release 1")
        finally:
            assert stop_agent(agent) == 0
    store = ModelStore(config.parent / "state" / "models")
    active = store.recover()  # verifies every file of the active slot against its sha256
    assert active is not None
    assert (active.release, active.version) == (1, "r1")
    assert not any(p.is_file() for p in scratch.rglob("*"))  # the half download is gone


def _run_agent_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgeai.cli", "agent", "run", "-c", str(config)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
        check=False,
    )


def _one_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    return errors[0]


def test_missing_factory_bundle_exits_2_not_tampered(tmp_path: Path) -> None:
    done = _run_agent_once(serve_only(tmp_path, tmp_path / "no-such-bundle", 0))
    assert done.returncode == 2, done.stderr[-3000:]
    line = _one_error(done)
    assert "agent.toml: bundle" in line
    assert "no-such-bundle: not a bundle directory (no such directory)" in line
    assert "tampered" not in line


def test_missing_trusted_root_exits_2_at_start(tmp_path: Path, releases: dict[str, Path]) -> None:
    config = write_config(
        tmp_path,
        f'node = "solo"\nprofile = "{PROFILE}"\nstate_dir = "s"\nbundle = "{releases["factory"]}"\n'
        "discovery = false\n[federation]\nenabled = false\n"
        '[updates]\nrepository_url = "http://127.0.0.1:9"\ntrusted_root = "nope.json"\n'
        "[serving]\ngrpc_port = 0\nhttp_port = 0\n",
    )
    done = _run_agent_once(config)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "updates.trusted_root" in _one_error(done)


@pytest.mark.parametrize("where", ["a-file", "under-a-file", "proc", "read-only"])
def test_unusable_state_dir_exits_3_with_one_line(
    tmp_path: Path, releases: dict[str, Path], where: str
) -> None:
    (tmp_path / "afile").write_text("not a directory", encoding="utf-8")
    state = {
        "a-file": tmp_path / "afile",
        "under-a-file": tmp_path / "afile" / "state",
        "proc": Path("/proc/self/edgeai-state"),
        "read-only": tmp_path / "ro",
    }[where]
    if where == "read-only":
        if os.geteuid() == 0:
            pytest.skip("root writes into a read-only directory")
        state.mkdir(mode=0o500)
    config = write_config(
        tmp_path / "cfg",
        f'node = "solo"\nprofile = "{PROFILE}"\nstate_dir = "{state}"\n'
        f'bundle = "{releases["factory"]}"\ndiscovery = false\n[federation]\nenabled = false\n'
        "[serving]\ngrpc_port = 0\nhttp_port = 0\n",
    )
    done = _run_agent_once(config)
    assert done.returncode == 3, done.stderr[-3000:]
    line = _one_error(done)
    assert line.startswith(f"error: cannot start: state_dir {state}"), line
