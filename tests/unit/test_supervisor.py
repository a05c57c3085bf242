"""The process supervisor: restarts with backoff, resets after a healthy run, stops cleanly."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from edgeai.plumbing.supervisor import NOT_FOUND, Backoff, ProcessSupervisor, signal_name
from tests.support.waiting import wait_for


def test_backoff_doubles_and_caps() -> None:
    b = Backoff(initial_s=0.5, max_s=4.0)
    assert [b.delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]


def test_signal_name() -> None:
    assert signal_name(-9) == "killed by SIGKILL"
    assert (signal_name(3), signal_name(None)) == ("exit 3", "did not start")


def test_crashing_child_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    lock = threading.Lock()

    def sink(kind: str, fields: dict[str, object]) -> None:
        with lock:
            events.append((kind, fields))

    sup = ProcessSupervisor(
        "crasher",
        [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
        backoff=Backoff(initial_s=0.05, max_s=0.2, reset_after_s=60),
        on_event=sink,
        log_path=tmp_path / "crasher.log",
    )
    sup.start()
    wait_for(lambda: sup.starts >= 4)
    sup.stop(grace_s=2)
    exits = [f for k, f in events if k == "process_exited"]
    assert [f["code"] for f in exits[:3]] == [3, 3, 3]
    assert [f["restart_in_s"] for f in exits[:3]] == [0.05, 0.1, 0.2]
    assert (tmp_path / "crasher.log").read_text().count("boom") >= 3  # the 4th may be stopped early


def test_killed_child_comes_back_and_stop_terminates_it() -> None:
    sup = ProcessSupervisor(
        "sleeper",
        [sys.executable, "-c", "import time; time.sleep(60)"],
        backoff=Backoff(initial_s=0.05),
    )
    sup.start()
    wait_for(lambda: sup.pid is not None)
    first = sup.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: sup.pid not in (None, first))
    assert sup.last_exit == -signal.SIGKILL
    second = sup.pid
    assert sup.stop(grace_s=5) == -signal.SIGTERM
    assert second is not None
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)


def test_a_long_healthy_run_resets_the_backoff() -> None:
    ticks = iter(range(0, 10**6, 10))  # every reading is 10 s later: each run looks healthy
    sup = ProcessSupervisor(
        "x",
        [sys.executable, "-c", "pass"],
        backoff=Backoff(initial_s=0.01, max_s=10, reset_after_s=5),
        clock=lambda: float(next(ticks)),
    )
    sup.failures = 6  # as after a bad start-up
    sup.start()
    wait_for(lambda: sup.starts >= 2)
    sup.stop()
    assert sup.failures == 1


def test_missing_executable_is_reported_and_retried(tmp_path: Path) -> None:
    events: list[tuple[str, dict[str, object]]] = []
    sup = ProcessSupervisor(
        "ghost",
        [str(tmp_path / "no-such-binary")],
        backoff=Backoff(initial_s=0.02, max_s=0.02),
        on_event=lambda kind, fields: events.append((kind, fields)),
        log_path=tmp_path / "ghost.log",
    )
    sup.start()
    try:
        wait_for(lambda: sum(k == "process_exited" for k, _ in events) >= 2)
    finally:
        sup.stop()
    exited = [f for k, f in events if k == "process_exited"]
    assert exited[0]["code"] == NOT_FOUND
    assert "command not found" in str(exited[0]["how"])
    assert "cannot run" in (tmp_path / "ghost.log").read_text()
