"""Two collectors in one MQTT 5 shared subscription group split the fleet's telemetry.

A real Mosquitto with the generated ACL (each collector its own account), two
``edgeai server collector`` subprocesses writing one fleet database, 20 nodes publishing
10,000 events with paho at QoS 1; the second collector is SIGKILLed midway and started
again (as its supervisor, systemd or Kubernetes, would).  Every event must be in the
database exactly once, every node's record must show its newest event, and both collectors
must have taken a share.  Then the second one is stopped for good (SIGTERM) and the first
must get all of the next 1,000 events alone.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgeai.server.broker import render_acl
from edgeai.telemetry.topics import encode_envelope
from tests.mosquitto import Mosquitto
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
FLEET = "scale"
NODES = [f"n{i:02d}" for i in range(20)]
PER_NODE = 500  # 20 x 500 = 10,000 events
COLLECTORS = {"edgeai-server": "pw-c1", "edgeai-server-c2": "pw-c2"}


class CollectorProcess:
    """``edgeai server collector`` as a real subprocess; ready once it prints its JSON line."""

    def __init__(self, root: Path, config: Path, user: str) -> None:
        self.root, self.config, self.user = root, config, user
        self.proc: subprocess.Popen[str] | None = None
        self.metrics = ""

    def start(self) -> CollectorProcess:
        pw = self.root / f"{self.user}.pw"
        pw.write_text(COLLECTORS[self.user], encoding="utf-8")
        env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
        cmd = [sys.executable, "-c", "from edgeai.cli import app; app()", "server", "collector"]
        cmd += ["--config"]
        cmd += [str(self.config), "--username", self.user, "--password-file", str(pw)]
        cmd += ["--metrics-port", "0", "--log-level", "WARNING"]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(self._stdout().readline()))
        reader.start()
        reader.join(120)
        assert line, f"{self.user} never got ready"
        assert line[0].strip(), f"{self.user} exited: {self._stderr()}"
        self.metrics = json.loads(line[0])["metrics"]
        return self

    def _stdout(self) -> IO[str]:
        assert self.proc is not None
        assert self.proc.stdout is not None
        return self.proc.stdout

    def _stderr(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return "(still running)"
        return self.proc.stderr.read()

    def stored(self) -> float:
        """``edgeai_collector_messages_total{kind="events"}`` of this process."""
        with urllib.request.urlopen(self.metrics, timeout=10) as resp:  # noqa: S310 - loopback
            text = resp.read().decode()
        prefix = 'edgeai_collector_messages_total{kind="events"} '
        return sum(float(ln[len(prefix) :]) for ln in text.splitlines() if ln.startswith(prefix))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        for stream in (self.proc.stdout, self.proc.stderr) if self.proc else ():
            if stream is not None:
                stream.close()


def federation_toml(root: Path, broker: Mosquitto, db: Path) -> Path:
    path = root / "federation.toml"
    path.write_text(
        f"""
fleet = "{FLEET}"
state_dir = "{root / "state"}"
metrics_host = "127.0.0.1"
[superlink]
insecure = true
node_auth = false
database = "superlink.db"
[broker]
url = "{broker.url}"
[releases]
state_dir = "releases"
calibration = "calibration.npz"
[collector]
broker_url = "{broker.url}"
username = "edgeai-server"
db_path = "{db}"
shared_group = "collectors"
keepalive_s = 5
reconnect_min_s = 1
reconnect_max_s = 2
""",
        encoding="utf-8",
    )
    return path


def publish_all(broker: Mosquitto, node: str, seqs: range, boot: str) -> None:
    """Publish events ``seqs`` of ``node`` at QoS 1 and wait for every PUBACK."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=node, protocol=paho.MQTTv5)
    client.username_pw_set(node, f"pw-{node}")
    client.max_inflight_messages_set(50)
    client.connect(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        infos = []
        for seq in seqs:
            body = {"i": seq}
            payload = encode_envelope(node, boot, seq, 1_700_000_000.0 + seq, body)
            topic = f"edgeai/v1/{FLEET}/nodes/{node}/events/tick"
            infos.append(client.publish(topic, payload, qos=1))
        for info in infos:
            info.wait_for_publish(120)
            assert info.rc == paho.MQTT_ERR_SUCCESS
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def publish_wave(broker: Mosquitto, seqs: range, boot: str) -> None:
    threads = [threading.Thread(target=publish_all, args=(broker, n, seqs, boot)) for n in NODES]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a publisher hung"


def rows(db: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30) as conn:
        sql = "SELECT node, boot_id, seq FROM history WHERE kind = 'events'"
        got = conn.execute(sql).fetchall()
    return [(str(n), str(b), int(s)) for n, b, s in got]


def settled(db: Path) -> int:
    """The row count once it stopped growing for a second (0 while it still grows)."""
    before = count(db)
    threading.Event().wait(1.0)
    after = count(db)
    return after if after == before else 0


def count(db: Path) -> int:
    return len(rows(db)) if db.exists() else 0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    users = {**COLLECTORS, **{n: f"pw-{n}" for n in NODES}}
    acl = render_acl(FLEET, "edgeai-server", ["edgeai-server-c2"]).splitlines()
    with Mosquitto(tmp_path / "broker", users=users, acl=acl) as b:
        yield b


def test_two_collectors_split_the_load_and_survive_a_sigkill(
    broker: Mosquitto, tmp_path: Path
) -> None:
    db = tmp_path / "state" / "fleet.sqlite"
    config = federation_toml(tmp_path, broker, db)
    c1 = CollectorProcess(tmp_path, config, "edgeai-server")
    c2 = CollectorProcess(tmp_path, config, "edgeai-server-c2")
    try:
        c1.start()
        c2.start()
        half = PER_NODE // 2
        publish_wave(broker, range(half), "boot-1")  # 5,000 events, both collectors up
        wait_for(lambda: count(db) >= 2_000, 300, "the first events stored", poll_s=0.2)
        c2.kill()  # midway: whatever c2 had in flight and unacknowledged stays in its session
        at_kill = count(db)
        publish_wave(broker, range(half, PER_NODE), "boot-1")  # 5,000 more, c2 is down
        alone = wait_for(lambda: settled(db), 300, "c1 done with its share", poll_s=0.2)
        c2.start()  # its supervisor restarts it: the session hands over what it queued
        total = len(NODES) * PER_NODE
        wait_for(lambda: count(db) == total, 600, f"{total} events in the database", poll_s=0.5)
        got = rows(db)
        assert len(got) == len(set(got)) == total
        assert set(got) == {(n, "boot-1", s) for n in NODES for s in range(PER_NODE)}
        c1_share = c1.stored()
        print(
            f"\nscale-out: {total} events; {at_kill} stored at the kill, {alone} before c2's "
            f"restart; c1 stored {c1_share:.0f}, c2 {c2.stored():.0f} after its restart"
        )
        assert 0 < c1_share < total, "the group did not split the load"
        # Records folded by two writers: every node's last_seen is its newest event.
        with sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=30) as conn:
            records = dict(conn.execute("SELECT node, record FROM nodes").fetchall())
        newest = 1_700_000_000.0 + PER_NODE - 1
        assert sorted(records) == NODES
        for node, text in records.items():
            assert json.loads(text)["last_seen"] == newest, (node, text)
        # A replica stopped for good (SIGTERM: a scale-down) leaves the group first, so the
        # survivor gets everything published afterwards (Mosquitto 2.0 would otherwise keep
        # queuing c2's share in its session).
        c2.stop()
        publish_wave(broker, range(50), "boot-2")
        wait_for(lambda: count(db) == total + 1_000, 300, "c1 alone takes it all", poll_s=0.5)
    finally:
        c1.stop()
        c2.stop()
