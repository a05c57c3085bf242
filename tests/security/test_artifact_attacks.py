"""Attacks on the artifact server: a real ``edgeai server run`` on 127.0.0.1.

The first finding of the security review: ``GET /metadata/%2e%2e/keys/root.pem`` returned
the TUF root key, and with the four keys an attacker signed a release that a device
installed. Every probe here must be refused with a 4xx, return no key material, and leave
the server serving; the end-to-end attack must stop at its first step (no key fetched).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeai.artifacts import ArtifactRepository
from edgeai.artifacts._http import directory_lookup
from tests.support.federation import loopback_federation

ROLES = ("root", "targets", "snapshot", "timestamp")

# Ways to name a key file from under /metadata/ or /targets/. The keys live in tuf.keys/
# beside the served tuf/ (and, in repositories made before, in tuf/keys/).
TRAVERSALS = [
    "/metadata/%2e%2e/keys/root.pem",
    "/metadata/%2E%2E/keys/root.pem",
    "/targets/%2e%2e/keys/root.pem",
    "/metadata/%2e%2e/%2e%2e/tuf.keys/root.pem",
    "/metadata/%2e%2e/%2e%2e/tuf.keys/targets.pem",
    "/targets/%2e%2e/%2e%2e/tuf.keys/snapshot.pem",
    "/metadata/..%2f..%2ftuf.keys%2ftimestamp.pem",
    "/metadata/%252e%252e/%252e%252e/tuf.keys/root.pem",  # double-encoded
    "/metadata/%25252e%25252e/keys/root.pem",  # triple-encoded
    "/metadata/..%5c..%5ctuf.keys%5croot.pem",  # encoded backslashes
    "/metadata/..\\..\\tuf.keys\\root.pem",  # raw backslashes
    "/metadata/../../tuf.keys/root.pem",  # raw dot-dot (not normalised by our client)
    "/metadata/./../keys/root.pem",
    "/metadata//etc/passwd",
    "/metadata/%2fetc%2fpasswd",
    "//etc/passwd",
    "/../tuf.keys/root.pem",
    "/tuf.keys/root.pem",
    "/keys/root.pem",
    "/metadata/1.root.json%00.pem",
    "/metadata/%c0%ae%c0%ae/keys/root.pem",  # overlong UTF-8 dots
    "/metadata/%ff%fe",  # not UTF-8
    "/metadata/",  # directory listing
    "/",
    "/metadata",
    "/metadata/.",
    "/metadata/%2e",
    "/metadata/.hidden",
    "/targets/x86-64-avx2/../../../tuf.keys/root.pem",
    "http://127.0.0.1/metadata/%2e%2e/keys/root.pem",  # absolute-form request target
    "/metadata/" + "a" * 5000,  # oversized path
]


@dataclass
class Reply:
    status: int
    body: bytes


def raw_request(port: int, path: str, method: str = "GET", timeout: float = 10.0) -> Reply:
    """One request with the path sent byte for byte (no client-side normalisation)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        sock.sendall(head.encode("latin-1", errors="replace"))
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    raw = b"".join(chunks)
    status_line, _, rest = raw.partition(b"\r\n")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return Reply(status, rest.partition(b"\r\n\r\n")[2])


def write_federation(root: Path) -> Path:
    state = root / "server"
    state.mkdir(parents=True)
    rng = np.random.default_rng(0)
    np.savez(state / "cal.npz", X=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8),
             y=np.arange(8) % 10)  # fmt: skip
    return loopback_federation(
        state / "federation.toml", state_dir=str(state), calibration="cal.npz", fleet="sec"
    )


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    state: Path
    port: int
    keys: dict[str, bytes]


def healthy(server: Server) -> bool:
    reply = raw_request(server.port, "/metadata/timestamp.json")
    return reply.status == 200 and b'"signed"' in reply.body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    import tomllib  # noqa: PLC0415

    root = tmp_path_factory.mktemp("artifact-attacks")
    config = write_federation(root)
    port = tomllib.loads(config.read_text())["artifacts"]["port"]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = (root / "server.log").open("wb")
    argv = [sys.executable, "-m", "edgeai.cli", "server", "run", "-c", str(config)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
    state = root / "server"
    try:
        deadline = time.monotonic() + 120
        while not (state / "status.json").is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text(errors="replace")[-3000:]
                pytest.fail(f"the server did not start ({proc.returncode}):\n{tail}")
            time.sleep(0.1)
        keys = {r: (state / "tuf.keys" / f"{r}.pem").read_bytes() for r in ROLES}
        yield Server(proc, state, port, keys)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_keys_live_outside_the_served_repository(server: Server) -> None:
    assert not (server.state / "tuf" / "keys").exists()
    assert not list((server.state / "tuf").rglob("*.pem"))
    assert all(b"PRIVATE KEY" in key for key in server.keys.values())


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_is_refused_and_the_server_still_serves(server: Server, path: str) -> None:
    reply = raw_request(server.port, path)
    assert 400 <= reply.status < 500, (path, reply.status)
    assert b"PRIVATE KEY" not in reply.body
    assert b"root:" not in reply.body  # /etc/passwd
    assert server.proc.poll() is None
    assert healthy(server)


@pytest.mark.parametrize(
    "path",
    [
        "/metadata/1.root.json?../../tuf.keys/root.pem",
        "/metadata/1.root.json#/../tuf.keys/root.pem",
    ],
)
def test_query_and_fragment_are_ignored_not_followed(server: Server, path: str) -> None:
    reply = raw_request(server.port, path)
    assert reply.status == 200
    assert reply.body == (server.state / "tuf" / "metadata" / "1.root.json").read_bytes()


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_other_methods_are_4xx(server: Server, method: str) -> None:
    reply = raw_request(server.port, "/metadata/timestamp.json", method=method)
    assert 400 <= reply.status < 500, (method, reply.status)
    assert healthy(server)


def test_malformed_request_lines_are_4xx(server: Server) -> None:
    lines = {
        b"GET\r\n\r\n": 400,
        # RFC 9110 §15.6.6 defines 505 for an HTTP major version the server doesn't speak.
        b"GET /metadata/timestamp.json HTTP/9.9\r\n\r\n": 505,
        b"\x00\xff\xfe garbage\r\n\r\n": 400,
        b"GET " + b"/" * 70000 + b" HTTP/1.1\r\n\r\n": 414,
    }
    for line, expected in lines.items():
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(line)
            reply = sock.recv(4096)
        words = reply.split(b"\r\n", 1)[0].split()
        status = int(words[1]) if reply.startswith(b"HTTP/") and len(words) > 1 else 0
        assert status == expected, (line[:40], reply[:80])
        assert healthy(server)


def test_end_to_end_key_theft_stops_at_the_first_step(server: Server) -> None:
    """Fetch keys through the server, then sign a release: no key ever comes back."""
    stolen: dict[str, bytes] = {}
    for role in ROLES:
        for path in TRAVERSALS:
            reply = raw_request(server.port, path.replace("root.pem", f"{role}.pem"))
            if reply.status == 200 and b"PRIVATE KEY" in reply.body:
                stolen[role] = reply.body
    assert stolen == {}, f"keys served: {sorted(stolen)}"
    # Had any come back, the next step would sign targets, snapshot and timestamp with them;
    # none did, so there is nothing to sign with.
    assert healthy(server)


# -- the path resolver itself, without the network ---------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tree")
    repo = ArtifactRepository.create(root / "tuf")
    (repo.targets_dir / "p").mkdir()
    (repo.targets_dir / "p" / "a.bin").write_bytes(b"ok")
    (repo.targets_dir / "p" / "link").symlink_to(repo.keys_dir / "root.pem")
    (repo.path / "keys").mkdir()  # a stray old-layout folder must not be reachable either
    (repo.path / "keys" / "root.pem").write_bytes(b"PRIVATE KEY")
    return repo.path


def test_symlink_out_of_the_repository_is_not_followed(tree: Path) -> None:
    lookup = directory_lookup(tree, ("metadata", "targets"))
    assert lookup("/targets/p/a.bin") == (tree / "targets" / "p" / "a.bin").resolve()
    assert lookup("/targets/p/link") is None
    assert lookup("/keys/root.pem") is None


ALPHABET = st.sampled_from(
    ["/", ".", "..", "%2e", "%2E", "%2f", "%5c", "%25", "\\", "%00", "keys", "root.pem",
     "metadata", "targets", "tuf.keys", "p", "a.bin", "link", "1.root.json", "%", "~"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(ALPHABET, min_size=1, max_size=12).map("".join))
def test_no_decoded_path_escapes_the_allowed_folders(tree: Path, path: str) -> None:
    lookup = directory_lookup(tree, ("metadata", "targets"))
    found = lookup(path if path.startswith("/") else "/" + path)
    if found is not None:
        assert found.is_file()
        assert any(found.is_relative_to((tree / d).resolve()) for d in ("metadata", "targets"))
        assert b"PRIVATE KEY" not in found.read_bytes()


def test_old_layout_keys_move_out_on_open(tmp_path: Path) -> None:
    repo = ArtifactRepository.create(tmp_path / "tuf")
    repo.keys_dir.rename(repo.path / "keys")  # the layout before the fix
    reopened = ArtifactRepository.open(repo.path)
    assert not (repo.path / "keys").exists()
    assert (reopened.keys_dir / "root.pem").is_file()


def test_keys_dir_inside_the_repository_is_refused(tmp_path: Path) -> None:
    from edgeai.artifacts import ArtifactError  # noqa: PLC0415

    with pytest.raises(ArtifactError, match="must not be inside the served repository"):
        ArtifactRepository.create(tmp_path / "tuf", keys_dir=tmp_path / "tuf" / "metadata" / "k")


def test_the_server_signs_releases_without_the_root_key(tmp_path: Path, tiny_bundle: Path) -> None:
    repo = ArtifactRepository.create(tmp_path / "tuf")
    offline = tmp_path / "offline-root.pem"
    (repo.keys_dir / "root.pem").rename(offline)  # what the operator does after setup
    assert repo.add_release("x86-64-avx2", tiny_bundle, 1)
    assert ArtifactRepository.open(repo.path).latest("x86-64-avx2") == 1
