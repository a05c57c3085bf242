"""Child processes and waiting: stop one, wait for a condition, probe a port, find a program.

Each was written by hand several times (SIGTERM then SIGKILL, deadline loops, port probes);
here once. :func:`wait_until` takes its clock and sleep, so unit tests need not sleep.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from edgeai.errors import ConfigError

__all__ = [
    "ExecutableNotFoundError",
    "find_executable",
    "free_port",
    "port_accepts",
    "terminate",
    "terminate_all",
    "wait_until",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


class ExecutableNotFoundError(ConfigError):
    """A program is neither on PATH nor next to this Python; the message says what to install."""


def terminate(proc: subprocess.Popen[Any], grace_s: float, *, name: str | None = None) -> int:
    """SIGTERM ``proc``, wait up to ``grace_s``, then SIGKILL it; return its exit code.

    A process that has exited already is only reaped.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return _reap(proc, grace_s, name)


def terminate_all(procs: Iterable[subprocess.Popen[Any] | None], grace_s: float) -> None:
    """SIGTERM every running process first (in order), then reap each as :func:`terminate`.

    Each gets up to ``grace_s`` after the previous one was reaped, so they stop in parallel.
    """
    alive = [p for p in procs if p is not None]
    for proc in alive:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in alive:
        _reap(proc, grace_s, None)


def _reap(proc: subprocess.Popen[Any], grace_s: float, name: str | None) -> int:
    try:
        return proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        log.warning("%s ignored SIGTERM for %.0f s; killing it", name or f"pid {proc.pid}", grace_s)
        proc.kill()
        return proc.wait()


def wait_until(
    predicate: Callable[[], T | None],
    deadline_s: float,
    what: str,
    *,
    poll_s: float = 0.05,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    check: Callable[[], None] | None = None,
) -> T:
    """Poll ``predicate`` every ``poll_s`` until it returns something true; return that.

    ``check`` runs after each false answer and may raise to give up early (a process
    died).

    Raises
    ------
    TimeoutError
        ``deadline_s`` passed; the message says what was awaited (``what``).
    """
    end = clock() + deadline_s
    while True:
        result = predicate()
        if result:
            return result
        if check is not None:
            check()
        if clock() >= end:
            raise TimeoutError(f"timed out after {deadline_s:.0f} s waiting for {what}")
        sleep(poll_s)


def port_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (another process may take it)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def find_executable(name: str, *, fix: str = "") -> str:
    """``name`` on PATH or next to this Python (a virtual environment's bin); its path.

    Raises
    ------
    ExecutableNotFoundError
        Found in neither; the message names both places and ``fix``.
    """
    here = Path(sys.executable).parent
    found = shutil.which(name) or shutil.which(name, path=str(here))
    if found is None:
        raise ExecutableNotFoundError(
            f"{name!r} not found on PATH or in {here}" + (f"; {fix}" if fix else "")
        )
    return found
