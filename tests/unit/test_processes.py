"""Process and wait helpers: terminate with a grace, waits under a deadline, ports, programs."""

from __future__ import annotations

import logging
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgeai.errors import ConfigError
from edgeai.plumbing.processes import (
    ExecutableNotFoundError,
    find_executable,
    free_port,
    port_accepts,
    terminate,
    terminate_all,
    wait_until,
)

# The child says "ready" once its handler is in place: a SIGTERM sent earlier would kill it.
_SLEEPER = "import signal, sys, time\n{setup}\nprint('ready', flush=True)\ntime.sleep(60)\n"


def _child(*, ignore_sigterm: bool = False) -> subprocess.Popen[str]:
    setup = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if ignore_sigterm else ""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLEEPER.format(setup=setup)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n"
    proc.stdout.close()
    return proc


class FakeTime:
    """A clock that moves only when slept on."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- terminate ------------------------------------------------------------------------------


def test_terminate_stops_a_child_with_sigterm() -> None:
    proc = _child()
    assert terminate(proc, grace_s=10) == -signal.SIGTERM
    assert proc.poll() == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(
    caplog: pytest.LogCaptureFixture,
) -> None:
    proc = _child(ignore_sigterm=True)
    with caplog.at_level(logging.WARNING, logger="edgeai.plumbing.processes"):
        assert terminate(proc, grace_s=0.3, name="stubborn") == -signal.SIGKILL
    assert "stubborn ignored SIGTERM" in caplog.text


def test_terminate_only_reaps_a_child_that_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    assert terminate(proc, grace_s=0.1) == 3


def test_terminate_all_signals_every_child_before_waiting() -> None:
    stubborn, polite = _child(ignore_sigterm=True), _child()
    terminate_all([stubborn, None, polite], grace_s=0.3)
    # The polite one got its SIGTERM before the stubborn one's grace began.
    assert (stubborn.returncode, polite.returncode) == (-signal.SIGKILL, -signal.SIGTERM)


# -- wait_until -----------------------------------------------------------------------------


def test_wait_until_returns_the_first_true_answer_without_real_sleep() -> None:
    t = FakeTime()
    answers = iter([None, 0, "", "found"])
    got = wait_until(lambda: next(answers), 5, "x", poll_s=0.5, clock=t.clock, sleep=t.sleep)
    assert got == "found"
    assert t.sleeps == [0.5, 0.5, 0.5]


def test_wait_until_times_out_naming_what_it_waited_for() -> None:
    t = FakeTime()
    calls: list[float] = []

    def never() -> bool:
        calls.append(t.now)
        return False

    with pytest.raises(TimeoutError, match=r"timed out after 2 s waiting for the broker"):
        wait_until(never, 2, "the broker", poll_s=0.5, clock=t.clock, sleep=t.sleep)
    # Asked at 0, 0.5, ..., 2.0: never slept past the deadline.
    assert calls == [100.0, 100.5, 101.0, 101.5, 102.0]
    assert t.now == 102.0


def test_wait_until_check_runs_after_each_no_and_can_give_up_early() -> None:
    t = FakeTime()
    checks: list[float] = []

    def check() -> None:
        checks.append(t.now)
        if len(checks) == 3:
            raise ChildProcessError("it died")

    with pytest.raises(ChildProcessError, match="it died"):
        wait_until(lambda: False, 60, "x", poll_s=1, clock=t.clock, sleep=t.sleep, check=check)
    assert checks == [100.0, 101.0, 102.0]


def test_wait_until_does_not_check_once_the_answer_is_yes() -> None:
    def check() -> None:
        raise AssertionError("check ran after a true answer")

    assert wait_until(lambda: True, 1, "x", check=check, sleep=lambda _s: None) is True


# -- ports ----------------------------------------------------------------------------------


def test_port_accepts_a_listener_and_not_a_closed_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_accepts("127.0.0.1", port)
    assert not port_accepts("127.0.0.1", port)


def test_free_port_can_be_bound() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- executables ----------------------------------------------------------------------------


def test_find_executable_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = tmp_path / "edgeai-test-tool"
    tool.write_text("#!/bin/sh\n", encoding="utf-8")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_executable("edgeai-test-tool") == str(tool)


def test_find_executable_next_to_this_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", os.devnull)  # nothing on PATH
    name = Path(sys.executable).name
    assert Path(find_executable(name)).parent == Path(sys.executable).parent


def test_a_missing_executable_names_where_it_looked_and_the_fix() -> None:
    with pytest.raises(ExecutableNotFoundError) as info:
        find_executable("no-such-edgeai-tool", fix="install the tool")
    message = str(info.value)
    assert "'no-such-edgeai-tool' not found on PATH" in message
    assert str(Path(sys.executable).parent) in message
    assert message.endswith("; install the tool")
    assert isinstance(info.value, ConfigError)
