"""Keep one child process running: restart it with exponential backoff, stop it cleanly.

The agent supervises ``flower-supernode`` with this. A child that ran long enough
(``reset_after_s``) is considered healthy again, so a crash a week later restarts at once
instead of waiting the backoff it reached during a bad start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from edgeai.plumbing.processes import terminate

log = logging.getLogger(__name__)
EventSink = Callable[[str, dict[str, object]], None]


@dataclass(frozen=True)
class Backoff:
    """Delays between restarts: ``initial_s * factor**(failures - 1)``, capped at ``max_s``."""

    initial_s: float = 1.0
    max_s: float = 60.0
    factor: float = 2.0
    reset_after_s: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number ``failures`` (1 = the first)."""
        if failures <= 0:
            return 0.0
        return float(min(self.max_s, self.initial_s * self.factor ** (failures - 1)))


# A SIGKILLed agent must not leave an orphan SuperNode holding the node's identity and port;
# Linux can signal a child when its parent dies (prctl(2) PR_SET_PDEATHSIG). It is set by
# this exec shim rather than a preexec_fn: forking a process that runs gRPC threads with
# Python code in the child aborts in gRPC's fork handlers, and without a preexec_fn CPython
# uses vfork, which runs none. The shim exits if the parent is already gone.
_PDEATHSIG_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(0)\n"
    "try:\n"
    "    os.execvp(sys.argv[2], sys.argv[2:])\n"
    "except OSError as exc:\n"
    "    print(f'cannot run {sys.argv[2]}: {exc}', file=sys.stderr)\n"
    "    sys.exit(127)\n"
)
NOT_FOUND = 127  # the shim could not exec the command (as a shell reports it)


def with_parent_death_signal(argv: Sequence[str]) -> list[str]:
    """Wrap ``argv`` so the child gets SIGTERM when this process dies (Linux only)."""
    if sys.platform != "linux":
        return list(argv)
    return [sys.executable, "-c", _PDEATHSIG_SHIM, str(os.getpid()), *argv]


class ProcessSupervisor:
    """Run ``argv`` in a background thread, restarting it whenever it exits until stopped.

    Parameters
    ----------
    name
        Short name for logs and events (``supernode``).
    argv, env
        The command and its environment (``None``: inherit).
    backoff
        Restart delays.
    on_event
        Called with ``("process_started" | "process_exited", fields)``.
    log_path
        The child's stdout and stderr are appended here (``None``: discarded).
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        backoff: Backoff | None = None,
        on_event: EventSink | None = None,
        log_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env) if env is not None else None
        self.backoff = backoff or Backoff()
        self._emit = on_event or (lambda _kind, _fields: None)
        self._log_path = log_path
        self._clock = clock
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self._grace_s = 10.0
        self.starts = 0
        self.failures = 0
        self.last_exit: int | None = None

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None between restarts."""
        with self._lock:
            proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def start(self) -> None:
        """Start the child and the thread that keeps it running."""
        if self._thread is not None:
            raise RuntimeError(f"{self.name} supervisor already started")
        self._thread = threading.Thread(target=self._loop, name=f"supervise-{self.name}")
        self._thread.start()

    def stop(self, grace_s: float = 10.0) -> int | None:
        """Stop restarting; SIGTERM the child, SIGKILL it after ``grace_s``; return its code."""
        self._grace_s = grace_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.last_exit

    def _end(self, proc: subprocess.Popen[bytes]) -> int:
        # Runs on the supervising thread, so a child spawned while stop() was being called
        # is still seen and ended.
        if proc.poll() is None and self._stop.is_set():
            return terminate(proc, self._grace_s, name=self.name)
        return proc.wait()

    def _spawn(self, out: IO[bytes] | int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            with_parent_death_signal(self.argv),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def _loop(self) -> None:
        with contextlib.ExitStack() as stack:
            out: IO[bytes] | int = subprocess.DEVNULL
            if self._log_path is not None:
                self._log_path.parent.mkdir(parents=True, exist_ok=True)
                out = stack.enter_context(self._log_path.open("ab"))
            while not self._stop.is_set():
                started = self._clock()
                try:
                    proc = self._spawn(out)
                except OSError as exc:
                    code: int | None = None
                    self._emit("process_failed", {"process": self.name, "error": str(exc)})
                    log.error("cannot start %s: %s", self.name, exc)
                else:
                    with self._lock:
                        self._proc = proc
                    self.starts += 1
                    fields = {"process": self.name, "pid": proc.pid, "starts": self.starts}
                    self._emit("process_started", fields)
                    while proc.poll() is None and not self._stop.wait(0.1):
                        pass
                    code = self._end(proc)
                    self.last_exit = code
                    with self._lock:
                        self._proc = None
                if self._stop.is_set():
                    break
                ran = self._clock() - started
                self.failures = 1 if ran >= self.backoff.reset_after_s else self.failures + 1
                delay = self.backoff.delay(self.failures)
                how = signal_name(code)
                self._emit(
                    "process_exited",
                    {
                        "process": self.name,
                        "code": code,
                        "how": how,
                        "ran_s": round(ran, 3),
                        "restart_in_s": delay,
                    },
                )
                log.warning("%s %s after %.1f s; restart in %.1f s", self.name, how, ran, delay)
                self._stop.wait(delay)


def signal_name(code: int | None) -> str:
    """Describe an exit code as Popen reports it ('exit 3', 'killed by SIGKILL')."""
    if code is None:
        return "did not start"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    if code == NOT_FOUND:
        return f"exit {code} (command not found or not executable)"
    return f"exit {code}"


__all__ = ["Backoff", "ProcessSupervisor", "signal_name"]
