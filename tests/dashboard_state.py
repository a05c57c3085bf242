"""A server state directory as `edgeai server run` leaves it, built through the real parts.

The fleet database is written by the real collector (its state machine and store), fed
telemetry envelopes through the in-memory subscriber; the run's files, the release
manager's state and the server's status.json are written by the functions the server
uses. Used by the dashboard's tests and by bench/bench_dashboard.py, with a raw HTTP client
that sends request targets byte for byte.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edgeai.flower.runspec import RunPaths, write_status
from edgeai.server.collector import Collector, CollectorConfig, MemorySubscriber
from edgeai.server.releases import ManagerState, Release, Rollout, save_state
from edgeai.telemetry.topics import Envelope, NodeTopics

FLEET = "dash"
PROFILES = ("x86-64-avx2", "rpi5", "jetson-orin-nano-8gb")
RUN_ID = 4242
SKEWED = "node-skewed"  # a node whose clock runs 10 min ahead


@dataclass
class State:
    """What :func:`populate` wrote."""

    config: Path  # federation.toml
    state_dir: Path
    db: Path
    rounds: Path  # the run's rounds.jsonl
    nodes: list[str]


def node_name(i: int) -> str:
    return f"node-{i:04d}"


def _messages(node: str, i: int, now: float, skew: float) -> list[tuple[str, bytes]]:
    topics = NodeTopics(FLEET, node)
    profile = PROFILES[i % len(PROFILES)]
    release = 1 if i % 7 else None
    version = "20250101-r1" if release else "seed"
    ts = now - 5 + skew

    def env(seq: int, body: dict[str, Any]) -> bytes:
        return Envelope(node, "boot-1", seq, ts + seq * 0.01, body).encode()

    status: dict[str, Any] = {"state": "online" if i % 10 != 9 else "offline"}
    status.update(profile=profile, model_version=version)
    if release:
        status["release"] = release
    metrics = {"epsilon": 0.5 + (i % 5) / 10, "delta": 1e-5, "p95_ms": 2.0 + (i % 13) / 4}
    metrics["inference_count"] = 20
    return [
        (topics.profile, env(1, {"name": profile, "arch": "x86_64"})),
        (topics.status, env(2, status)),
        (topics.telemetry, env(3, {"metrics": metrics, "outbox": {"queued": 0, "dropped": 0}})),
        (topics.event("round_joined"), env(4, {"run_id": RUN_ID, "round": 5, "epsilon": 1.1})),
    ]


def write_fleet(db: Path, count: int, now: float, *, skewed: bool = True) -> list[str]:
    """``count`` nodes (plus a skewed one) through the real collector; returns their names."""
    collector = Collector(
        CollectorConfig(fleet=FLEET, db_path=db, offline_after_s=180),
        MemorySubscriber(),
        lambda: now,  # the receive time: the server's clock
        registry=CollectorRegistry(),
    )
    names = [node_name(i) for i in range(count)]
    plan = [(name, i, 0.0) for i, name in enumerate(names)]
    if skewed:
        plan.append((SKEWED, count, 600.0))
        names.append(SKEWED)
    try:
        collector.start()
        for name, i, skew in plan:
            for topic, payload in _messages(name, i, now, skew):
                outcome = collector.handle(topic, payload)
                assert outcome == "stored", (topic, outcome)
    finally:
        collector.stop()
    return names


def round_line(n: int) -> dict[str, Any]:
    """One line of a deployed run's rounds.jsonl (RoundRecord + how the round went)."""
    return {
        "round": n,
        "accuracy": round(0.55 + 0.08 * n, 4),
        "loss": round(1.6 / n, 4),
        "epsilon": round(0.9 * n**0.5, 4),
        "client_epsilon": None,
        "bytes_up": 120_000,
        "bytes_down": 120_000,
        "seconds": 4.0 + n / 10,
        "train_loss": round(1.7 / n, 4),
        "sampled": 3,
        "accepted": 3,
        "rejected": 0,
        "failed": 0,
        "refused": 0,
        "delta": 1e-5,
        "client_delta": None,
        "problems": [],
        "missing": 0,
        "wait_s": 0.2,
    }


def write_run(state_dir: Path, rounds: int, now: float) -> Path:
    paths = RunPaths(state_dir / "run")
    paths.root.mkdir(parents=True, exist_ok=True)
    with paths.rounds.open("w", encoding="utf-8") as fh:
        for n in range(1, rounds + 1):
            fh.write(json.dumps(round_line(n)) + "\n")
    write_status(paths, "finished", round=rounds)
    status = {
        "ts": now,
        "fleet": FLEET,
        "run": {"id": RUN_ID, "status": "finished", "sub_status": "completed", "rounds": []},
    }
    (state_dir / "status.json").write_text(json.dumps(status), encoding="utf-8")
    return paths.rounds


def write_releases(state_dir: Path, waves: dict[str, tuple[str, ...]], now: float) -> None:
    rollouts = {
        profile: Rollout(
            profile=profile,
            state="promoted",
            wave=wave,
            started=now - 60,
            changed=now - 30,
            acked=wave,
            announced=True,
        )
        for profile, wave in waves.items()
    }
    release = Release(
        release=1,
        version="20250101-r1",
        accuracy=0.94,
        round=5,
        source="run/checkpoints/round-0005.npz",
        created=now - 90,
        rollouts=rollouts,
    )
    save_state(state_dir / "releases" / "releases.json", ManagerState(releases=(release,)))


def write_config(root: Path, state_dir: Path) -> Path:
    config = root / "federation.toml"
    config.write_text(
        f"""fleet = "{FLEET}"
state_dir = "{state_dir}"
[superlink]
insecure = true
node_auth = false
database = "superlink.db"
[broker]
manage = true
tls = false
[releases]
state_dir = "releases"
calibration = "cal.npz"
[dashboard]
port = 0
""",
        encoding="utf-8",
    )
    return config


def populate(
    root: Path, nodes: int = 3, rounds: int = 5, now: float | None = None, *, skewed: bool = False
) -> State:
    """Write a whole state directory under ``root``; ``root/federation.toml`` names it."""
    now = time.time() if now is None else now
    state_dir = root / "server"
    state_dir.mkdir(parents=True, exist_ok=True)
    db = state_dir / "fleet.sqlite"
    names = write_fleet(db, nodes, now, skewed=skewed)
    rounds_path = write_run(state_dir, rounds, now)
    waves = {p: tuple(n for i, n in enumerate(names[:nodes]) if i % len(PROFILES) == k)[:1]
             for k, p in enumerate(PROFILES)}  # fmt: skip
    write_releases(state_dir, waves, now)
    return State(write_config(root, state_dir), state_dir, db, rounds_path, names)


# -- talking to it ---------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


def request(
    port: int, target: str, method: str = "GET", host: str = "127.0.0.1", **headers: str
) -> Reply:
    """One HTTP/1.1 request with the target sent byte for byte (no client normalisation)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {headers.pop('Host', host)}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines += ["Connection: close", "", ""]
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall("\r\n".join(lines).encode("latin-1", errors="replace"))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    if parsed.get("Transfer-Encoding") == "chunked":
        body = _unchunk(body)
    return Reply(int(status_line.split()[1]), parsed, body)


def _unchunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out, data = out + data[:size], data[size + 2 :]
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file's size and mtime, but SQLite's ``-shm``: the WAL index in shared memory
    that every reader, read-only ones included, maps and marks (`fleet status` too)."""
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith("-shm")
    }
