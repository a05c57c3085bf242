"""Flower's own CLI against the fleet's SuperLink: ``flwr ls`` over TLS with our FLWR_HOME.

A real SuperLink (TLS, node authentication, database) started by ``SuperLinkProcess``; the
``config.toml`` that ``edgeai server run`` writes (``write_flwr_config``); the stock ``flwr``
executable in a directory without a pyproject.toml.  Without the fleet CA in the file the
same command fails: the root certificate is what makes TLS work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeai.server.superlink import SuperLinkConfig, SuperLinkProcess, generate_tls
from edgeai.server.superlink.flwr_cli import CONNECTION, flwr_config_toml, write_flwr_config
from tests.mosquitto import free_port

pytestmark = pytest.mark.integration
FLWR = shutil.which("flwr") or str(Path(sys.executable).parent / "flwr")


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[SuperLinkConfig]:
    tls = generate_tls(tmp_path / "tls")
    cfg = SuperLinkConfig(
        port=free_port(),
        database=tmp_path / "superlink.db",
        ssl_certfile=tls.cert,
        ssl_keyfile=tls.key,
        ssl_ca_certfile=tls.ca_cert,
        flwr_home=tmp_path / "link-home",
        log_path=tmp_path / "superlink.log",
    )
    link = SuperLinkProcess(cfg)
    link.start()
    try:
        yield cfg
    finally:
        link.stop()


def flwr(home: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }
    return subprocess.run(
        [FLWR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False
    )


def test_flwr_ls_works_with_the_config_edgeai_writes(
    superlink: SuperLinkConfig, tmp_path: Path
) -> None:
    home = tmp_path / "flwr-home"
    cwd = tmp_path / "operator"
    cwd.mkdir()
    path = write_flwr_config(superlink, home)
    assert path == home / "config.toml"
    done = flwr(home, cwd, "ls", CONNECTION, "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout)
    assert out["success"] is True, out
    assert out["runs"] == []
    # Same file without the CA: the SuperLink's certificate no longer verifies.
    text = flwr_config_toml(superlink).splitlines()
    path.write_text("\n".join(ln for ln in text if not ln.startswith("root-cert")) + "\n")
    refused = flwr(home, cwd, "ls", CONNECTION, "--format", "json")
    # `--format json` exits 0 either way and reports in the document.
    assert json.loads(refused.stdout)["success"] is False, refused.stdout


def test_wildcard_host_becomes_loopback_and_insecure_is_written(tmp_path: Path) -> None:
    cfg = SuperLinkConfig(
        host="0.0.0.0",  # noqa: S104 - a listen address
        port=9092,
        database=tmp_path / "db",
        insecure=True,
        node_auth=False,
    )
    text = flwr_config_toml(cfg)
    assert 'default = "edgeai"' in text
    assert 'address = "127.0.0.1:9092"' in text
    assert "insecure = true" in text
