"""Hostile and broken config files: each is exit 2 with the file and field named, at once.

Found by the security review: ``target_epsilon = inf`` and ``num_clients = 100000`` passed
validation and failed later inside Ray (51 and 556 tracebacks); a non-UTF-8 file was a
``UnicodeDecodeError`` traceback; a missing ``releases.calibration`` started the server.
Each case runs the real ``edgeai`` command and checks that nothing started.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.federation import loopback_federation

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = (ROOT / "simulations" / "quickstart.toml").read_text(encoding="utf-8")


def edgeai(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    return subprocess.run(
        [sys.executable, "-m", "edgeai.cli", *argv],
        capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False,
    )  # fmt: skip


def assert_bad_input(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "ray" not in done.stderr.lower()  # refused before Ray started
    for needle in needles:
        assert needle in done.stderr, (needle, done.stderr)


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("target_epsilon = 3.0", "target_epsilon = inf", "target_epsilon"),
        ("target_epsilon = 3.0", "target_epsilon = nan", "target_epsilon"),
        ("max_grad_norm = 0.1", "max_grad_norm = -inf", "max_grad_norm"),
        ("learning_rate = 2.0", "learning_rate = inf", "learning_rate"),
        ("delta = 1e-5", "delta = nan", "delta"),
        ("num_clients = 10", "num_clients = 100000", "num_clients"),
    ],
)
def test_experiment_values_that_used_to_fail_inside_ray(
    tmp_path: Path, old: str, new: str, field: str
) -> None:
    assert old in QUICKSTART
    exp = tmp_path / "exp.toml"
    exp.write_text(QUICKSTART.replace(old, new), encoding="utf-8")
    done = edgeai("simulate", str(exp), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_bad_input(done, "exp.toml", field)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


@pytest.mark.parametrize("junk", [b"\xff\xfe", b'name = "caf\xe9"\n', b"\x00\x9f\x92\x96"])
def test_non_utf8_experiment_is_bad_input(tmp_path: Path, junk: bytes) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_bytes(junk + QUICKSTART.encode())
    done = edgeai("simulate", str(exp), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert_bad_input(done, "exp.toml", "UTF-8")


def federation(tmp_path: Path, calibration: str, **extra: object) -> Path:
    return loopback_federation(
        tmp_path / "federation.toml",
        state_dir="state",
        calibration=calibration,
        fleet="cfg",
        **extra,
    )


def test_missing_calibration_stops_the_server_before_it_starts(tmp_path: Path) -> None:
    config = federation(tmp_path, "/nonexistent/cal.npz")
    done = edgeai("server", "run", "-c", str(config), cwd=tmp_path)
    assert_bad_input(done, "federation.toml", "releases.calibration", "/nonexistent/cal.npz")
    assert not (tmp_path / "state" / "status.json").exists()
    assert not (tmp_path / "state" / "tuf").exists()  # nothing was created


def test_calibration_that_is_not_a_data_set_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cal.npz").write_bytes(b"PK\x03\x04 not really a zip")
    config = federation(tmp_path, str(tmp_path / "cal.npz"))
    done = edgeai("server", "run", "-c", str(config), cwd=tmp_path)
    assert_bad_input(done, "releases.calibration")


@pytest.mark.parametrize(
    ("experiment", "named"),
    [
        (QUICKSTART.replace("target_epsilon = 3.0", "target_epsilon = inf"), "target_epsilon"),
        # An attack is a simulation device; a deployed run used to be refused only when the
        # server submitted it, after the SuperLink, broker and artifact server had started.
        (QUICKSTART + '\n[attack]\nkind = "sign-flip"\nfraction = 0.2\n', "[attack]"),
    ],
    ids=["non-finite-epsilon", "attack"],
)
def test_run_experiment_is_validated_at_start_up(
    tmp_path: Path, experiment: str, named: str
) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "cal.npz", X=rng.integers(0, 255, (4, 28, 28), dtype=np.uint8),
             y=np.arange(4))  # fmt: skip
    (tmp_path / "exp.toml").write_text(experiment, encoding="utf-8")
    config = federation(
        tmp_path, str(tmp_path / "cal.npz"), run={"experiment": str(tmp_path / "exp.toml")}
    )
    done = edgeai("server", "run", "-c", str(config), cwd=tmp_path)
    assert_bad_input(done, "run.experiment", named)
    assert not (tmp_path / "state" / "status.json").exists()


def test_non_utf8_federation_toml_is_bad_input(tmp_path: Path) -> None:
    config = federation(tmp_path, "cal.npz")
    config.write_bytes(b"# \xc3\x28 broken\n" + config.read_bytes())
    done = edgeai("server", "run", "-c", str(config), cwd=tmp_path)
    assert_bad_input(done, "federation.toml", "UTF-8", "line 1")


def test_non_utf8_agent_toml_is_bad_input(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_bytes(b'node = "a\xff"\n')
    done = edgeai("agent", "run", "-c", str(config), cwd=tmp_path)
    assert_bad_input(done, "agent.toml", "UTF-8")


def test_config_that_is_a_directory_is_bad_input(tmp_path: Path) -> None:
    (tmp_path / "exp.toml").mkdir()
    done = edgeai("simulate", str(tmp_path / "exp.toml"), cwd=tmp_path)
    assert_bad_input(done, "exp.toml")
