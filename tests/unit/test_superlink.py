"""Unit tests of the SuperLink config, node keys, reply polling and resume (no processes)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID

from edgeai.errors import ConfigError
from edgeai.flower.experiment import Experiment
from edgeai.flower.loop import send_and_receive
from edgeai.flower.runspec import RunPaths, RunSpec, read_run_spec, write_run_spec
from edgeai.flower.server_app import latest_checkpoint, resume_point
from edgeai.models.checkpoint import (
    EPSILON_KEY,
    SPEC_FINGERPRINT_KEY,
    checkpoint_from_state,
    save_checkpoint,
)
from edgeai.plumbing.pki import generate_node_key
from edgeai.server.superlink import (
    SuperLinkConfig,
    flower_env,
    generate_tls,
    read_public_key,
    superlink_argv,
)
from edgeai.server.superlink.runs import app_pyproject
from tests.support.clock import FakeClock


def test_tls_config_is_required_unless_insecure(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="all three"):
        SuperLinkConfig(database=tmp_path / "db", ssl_certfile=tmp_path / "c")
    with pytest.raises(ValueError, match="node_auth needs TLS"):
        SuperLinkConfig(database=tmp_path / "db", insecure=True)
    cfg = SuperLinkConfig(database=tmp_path / "db", insecure=True, node_auth=False)
    argv = superlink_argv(cfg)
    assert "--insecure" in argv
    assert "--enable-supernode-auth" not in argv
    assert "--disable-runtime-dependency-installation" in argv  # else `uv sync` needs the net


def test_argv_with_tls_and_node_auth(tmp_path: Path) -> None:
    tls = generate_tls(tmp_path)
    cfg = SuperLinkConfig(
        database=tmp_path / "db",
        port=9500,
        ssl_certfile=tls.cert,
        ssl_keyfile=tls.key,
        ssl_ca_certfile=tls.ca_cert,
    )
    argv = superlink_argv(cfg)
    assert argv[argv.index("--port") + 1] == "9500"
    assert argv[argv.index("--database") + 1] == str(tmp_path / "db")
    assert argv[argv.index("--ssl-ca-certfile") + 1] == str(tls.ca_cert)
    assert "--enable-supernode-auth" in argv
    assert "--insecure" not in argv
    assert tls.key.stat().st_mode & 0o077 == 0


def _handshake(ca: Path, cert: Path, key: Path, host: str) -> None:
    """A TLS handshake in memory: a client that trusts ``ca`` dials ``host``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))  # X509_STRICT on 3.13
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=host)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        bios[2].write(bios[1].read())
        bios[0].write(bios[3].read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def test_generated_tls_verifies_for_every_host_and_keeps_no_ca_key(tmp_path: Path) -> None:
    tls = generate_tls(tmp_path / "tls", hosts=("127.0.0.1", "localhost", "link.lan"))
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == [
        "ca.pem",
        "server.key",
        "server.pem",
    ]
    cert = x509.load_pem_x509_certificate(tls.cert.read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "link.lan"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    for host in ("127.0.0.1", "localhost", "link.lan"):
        _handshake(tls.ca_cert, tls.cert, tls.key, host)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(tls.ca_cert, tls.cert, tls.key, "elsewhere.lan")
    first_ca = tls.ca_cert.read_bytes()
    again = generate_tls(tmp_path / "tls")  # a second set replaces the first
    assert again.ca_cert == tls.ca_cert
    assert again.ca_cert.read_bytes() != first_ca
    _handshake(again.ca_cert, again.cert, again.key, "localhost")


def test_flower_env_puts_the_venv_first_and_silences_flower(tmp_path: Path) -> None:
    env = flower_env(tmp_path, {"X": "1"}, base={"PATH": "/usr/bin"})
    assert env["PATH"].endswith(":/usr/bin")
    assert (Path(env["PATH"].split(":")[0]) / "flower-superexec").exists()
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
    assert env["FLWR_DISABLE_UPDATE_CHECK"] == "1"
    assert env["FLWR_HOME"] == str(tmp_path)
    assert env["X"] == "1"


def test_node_key_is_what_flower_reads(tmp_path: Path) -> None:
    key = generate_node_key(tmp_path / "k" / "node.key", comment="n1")
    assert key.private.stat().st_mode & 0o777 == 0o600
    assert key.public.read_text().startswith("ecdsa-sha2-nistp384 ")
    assert key.public.read_text().rstrip().endswith(" n1")
    load_ssh_private_key(key.private.read_bytes(), password=None)  # SuperNode's loader
    assert read_public_key(key.public).startswith(b"-----BEGIN PUBLIC KEY-----")


def test_bad_public_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such public key"):
        read_public_key(tmp_path / "missing.pub")
    (tmp_path / "junk.pub").write_text("not a key")
    with pytest.raises(ConfigError, match="not an OpenSSH public key"):
        read_public_key(tmp_path / "junk.pub")
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    (tmp_path / "ed.pub").write_bytes(
        ed.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    )
    with pytest.raises(ConfigError, match="NIST curve"):
        read_public_key(tmp_path / "ed.pub")


def test_app_pyproject_names_our_components() -> None:
    text = app_pyproject()
    assert 'serverapp = "edgeai.flower.server_app:app"' in text
    assert 'clientapp = "edgeai.flower.client_app:app"' in text
    assert 'spec = ""' in text


@dataclass
class FakeGrid:
    """Replies become available on the listed poll (index) per message."""

    ready_at: dict[str, int]
    polls: int = 0

    def push_messages(self, messages: Any) -> list[str]:
        return [m.id for m in messages]

    def pull_messages(self, ids: Any) -> list[Any]:
        self.polls += 1
        return [
            SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i))
            for i in ids
            if self.ready_at[i] <= self.polls
        ]


def test_replies_are_polled_until_all_came() -> None:
    grid = FakeGrid({"a": 1, "b": 3})
    clock = FakeClock()
    msgs: Any = [SimpleNamespace(id="a"), SimpleNamespace(id="b")]
    replies, missing = send_and_receive(
        grid, msgs, timeout_s=10, poll_s=0.1, clock=clock, sleep=clock.sleep
    )
    assert (len(replies), missing, grid.polls) == (2, 0, 3)
    assert clock.now == pytest.approx(0.2)


def test_reply_polling_stops_at_the_timeout() -> None:
    grid = FakeGrid({"a": 1, "dead": 10**9})
    clock = FakeClock()
    msgs: Any = [SimpleNamespace(id="a"), SimpleNamespace(id="dead")]
    replies, missing = send_and_receive(
        grid, msgs, timeout_s=2, poll_s=0.5, clock=clock, sleep=clock.sleep
    )
    assert (len(replies), missing) == (1, 1)
    assert clock.now == pytest.approx(2.0)


def _spec(tmp_path: Path, seed: int = 0) -> RunSpec:
    exp = Experiment.model_validate(
        {
            "name": "t",
            "seed": seed,
            "model": {"name": "dp-cnn-tiny"},
            "federation": {"num_clients": 2, "rounds": 3},
        }
    )
    return RunSpec(experiment=exp, out_dir=tmp_path)


def test_spec_round_trips_through_json(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    assert read_run_spec(write_run_spec(spec)) == spec
    with pytest.raises(ConfigError, match="no such file"):
        read_run_spec(tmp_path / "nope.json")


def test_resume_takes_the_newest_checkpoint_of_the_same_spec(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    paths = RunPaths(tmp_path)
    assert latest_checkpoint(paths, spec) is None
    assert resume_point(paths, spec).round == 1
    for rnd in (1, 2):
        ckpt = checkpoint_from_state(
            "dp-cnn-tiny",
            (1, 28, 28),
            10,
            {"w": np.full(3, rnd, np.float32)},
            round_=rnd,
            provenance={SPEC_FINGERPRINT_KEY: spec.fingerprint(), EPSILON_KEY: 0.5 * rnd},
        )
        save_checkpoint(ckpt, paths.checkpoint(rnd))
    paths.checkpoint(3).write_bytes(b"torn")  # unreadable: skipped, not fatal
    found = latest_checkpoint(paths, spec)
    assert found is not None
    assert found.round == 2
    assert found.provenance[EPSILON_KEY] == 1.0
    start = resume_point(paths, spec)
    assert (start.round, start.seed, start.worst_epsilon) == (3, spec.experiment.seed + 3, 1.0)
    with pytest.raises(ConfigError, match="another model, data set or seed"):
        latest_checkpoint(paths, _spec(tmp_path, seed=1))
