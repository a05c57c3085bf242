"""A warm SuperExec: each ClientApp runs in a child forked from one preloaded process.

Flower's SuperExec starts a fresh ``flwr-clientapp`` interpreter for every message
(``flwr/supercore/superexec/executor/subprocess_executor.py``), and each one imports
Python, Flower, torch and Opacus again: 4-6 s per round on a small device.  This
SuperExec imports them once, then runs Flower's own loop
(``flwr.supercore.superexec.run_superexec.run_superexec``) with :class:`ForkExecutor`,
whose ``launch`` forks a child that calls Flower's ``run_clientapp`` for the task's
token, the same function ``flwr-clientapp`` calls (``flwr/supernode/cli/flwr_clientapp.py``).
A fork server, like gunicorn's preload.

Run it next to a SuperNode started with ``--isolation process`` (the SuperNode then
starts no SuperExec of its own and serves the Runtime API on ``--host``/``--port``)::

    python -m edgeai.agent.warm_exec --runtime-api-address 127.0.0.1:9094 --insecure

What makes the fork safe (checked for Flower 1.42, torch 2, Opacus 1.5, CPython 3.11):

- The parent runs no torch op, so torch's OpenMP / intra-op pools do not exist yet.
  The only other threads are OpenBLAS pools (numpy's and scipy's), which shut
  themselves down around ``fork`` (``pthread_atfork`` in OpenBLAS
  ``driver/others/memory.c``); Flower's parent monitor thread only sleeps.
  ``logging`` and ``random`` re-initialise their locks and seed in the child
  (CPython ``os.register_at_fork``); numpy's global RNG is reseeded here.
- The child drops the parent's Flower exit handlers (``flwr.supercore.exit``): they
  close the parent's Runtime API client, and a TLS close in the child would break the
  parent's connection, which the child shares.  It resets the parent's signal
  handlers and always leaves through ``os._exit``, so no parent cleanup runs twice.
- Children are reaped in ``reconcile`` (Flower calls it before every task poll) and
  on ``close``, which waits up to ``grace_s`` for running children.
- A child outlives its parent: it finishes its task and replies.  Flower's
  ``flwr-clientapp`` stops itself when its SuperExec dies (``--parent-pid``), but a
  ClientApp stopped by a signal reports its task failed *without a reply*, and for
  ClientApp tasks the SuperNode then waits for that reply forever
  (``InMemoryNodeState.finish_task`` writes an error reply only for AgentApps;
  ``start_client_internal._push_messages`` loops until a reply exists).  An orphan
  is reaped by init; it ends with its task, or when the SuperNode is gone.

Exit codes: 0 stopped by a signal (Flower's graceful exit), 2 bad arguments,
3 a preload module failed to import; others are Flower's (``flwr.supercore.exit``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeai.agent.warm_child import child_main, describe_status
from edgeai.plumbing.processes import wait_until

if TYPE_CHECKING:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import ExecutionSpec, Executor, LaunchResult

log = logging.getLogger(__name__)

# What a ClientApp process spends its start-up on (``python -X importtime``): Flower's
# runtime, our ClientApp (torch, numpy, pydantic), Opacus (imported lazily by training)
# and torch._dynamo (0.5 s, imported by the optimizer's first step: 190 modules that a
# forked child would otherwise import on every round; listed by diffing sys.modules).
DEFAULT_PRELOAD = (
    "flwr.supernode.runtime.run_clientapp",
    "flwr.supercore.superexec.run_superexec",
    "edgeai.flower.client_app",
    "opacus",
    "opacus.accountants",
    "opacus.accountants.utils",
    "torch._dynamo",
)
READY_LINE = "edgeai warm SuperExec ready"
EXIT_PRELOAD_FAILED = 3
CLIENT_APP = "flwr-clientapp"


@dataclass
class ForkExecutor:
    """Flower ``Executor`` that forks a preloaded child per ClientApp task.

    Parameters
    ----------
    max_tasks
        Children allowed at once; beyond it the SuperExec acquires nothing.
    fallback
        Runs task types other than ``flwr-clientapp`` (default: Flower's
        ``SubprocessExecutor``).
    grace_s
        How long ``close`` waits for running children to finish.
    fork, waitpid, child, clock, sleep
        The OS seams, injectable for unit tests.
    """

    max_tasks: int = 4
    fallback: Executor | None = None
    grace_s: float = 5.0
    fork: Callable[[], int] = os.fork
    waitpid: Callable[[int, int], tuple[int, int]] = os.waitpid
    child: Callable[[ExecutionSpec], None] = child_main
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    children: dict[int, int] = field(default_factory=dict)
    exits: list[tuple[int, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.max_tasks < 1:
            raise ValueError(f"max_tasks must be at least 1, got {self.max_tasks}")
        if self.fallback is None:
            from flwr.supercore.superexec.executor import SubprocessExecutor  # noqa: PLC0415

            self.fallback = SubprocessExecutor()

    def _fallback(self) -> Executor:
        if self.fallback is None:  # set in __post_init__
            raise RuntimeError("ForkExecutor has no fallback executor")
        return self.fallback

    def get_eligible_capacity(
        self,
        supported_task_types: set[TaskType],
        *,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> tuple[set[TaskType], set[str]]:
        """Every supported type while a child slot is free; nothing when all are busy."""
        del insecure, root_certificates_path
        if len(self.children) >= self.max_tasks:
            return set(), set()
        return set(supported_task_types), set()

    def wait_for_capacity(
        self,
        task_type: TaskType | None = None,
        *,
        fab_hash: str | None = None,
        insecure: bool = False,
        root_certificates_path: str | None = None,
    ) -> None:
        """Reap children until a slot is free."""
        del task_type, fab_hash, insecure, root_certificates_path
        while len(self.children) >= self.max_tasks:
            self.reconcile()
            self.sleep(0.05)

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        """Fork a child for a ClientApp task; hand other task types to the fallback."""
        from flwr.supercore.superexec.executor import LaunchResult  # noqa: PLC0415

        if str(spec.task_type) != CLIENT_APP:
            return self._fallback().launch(spec)
        # Buffered output would be written twice: by the parent and by the child.
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = self.fork()
        except OSError as exc:
            return LaunchResult.failed(f"fork failed: {exc}")
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            self.child(spec)
            os._exit(1)
        self.children[pid] = spec.task_id
        log.debug("forked pid %d for task %d", pid, spec.task_id)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        """Reap the children that have exited (no zombies between task polls)."""
        for pid in list(self.children):
            try:
                done, status = self.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done, status = pid, 0  # already reaped elsewhere
            if done == pid:
                self._reaped(pid, status)
        self._fallback().reconcile()

    def _reaped(self, pid: int, status: int) -> None:
        task_id = self.children.pop(pid)
        self.exits.append((pid, task_id, status))
        if status != 0:
            log.warning("ClientApp for task %d (pid %d): %s", task_id, pid, describe_status(status))

    def close(self) -> None:
        """Reap children that finish within ``grace_s``; leave the others to finish alone."""

        def all_reaped() -> bool:
            if self.children:
                self.reconcile()
            return not self.children

        with contextlib.suppress(TimeoutError):  # the rest are left to finish, below
            wait_until(
                all_reaped,
                self.grace_s,
                "ClientApps",
                poll_s=0.05,
                clock=self.clock,
                sleep=self.sleep,
            )
        if self.children:
            # Signalling them would leave their SuperNode waiting for a reply forever.
            log.warning(
                "leaving %d running ClientApp(s) to finish on their own", len(self.children)
            )
            self.children.clear()
        self._fallback().close()


def preload(modules: Sequence[str]) -> float:
    """Import ``modules`` (no torch op runs: its thread pools must not exist at fork)."""
    started = time.perf_counter()
    for name in modules:
        importlib.import_module(name)
    return time.perf_counter() - started


def os_threads() -> int:
    """Threads of this process as the kernel sees them (C pools included)."""
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:
        return -1


@contextlib.contextmanager
def _executor_injected(executor: Executor) -> Iterator[None]:
    # run_superexec builds its executor with get_executor(...) and takes no instance
    # (flwr/supercore/superexec/run_superexec.py): that name is the one seam.
    from flwr.supercore.superexec import run_superexec as module  # noqa: PLC0415

    original = getattr(module, "get_executor")  # noqa: B009  (not re-exported: mypy)

    def ours(*_args: Any, **_kwargs: Any) -> Executor:
        return executor

    setattr(module, "get_executor", ours)  # noqa: B010
    try:
        yield
    finally:
        setattr(module, "get_executor", original)  # noqa: B010


def serve(args: argparse.Namespace, executor: Executor | None = None) -> None:
    """Preload, then run Flower's SuperExec loop with a :class:`ForkExecutor` (blocks)."""
    from flwr.supercore.superexec.run_superexec import run_superexec  # noqa: PLC0415

    if args.poll_s is not None:
        # Flower's only knob for its task poll (run_superexec._get_task_poll_interval).
        os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = str(args.poll_s)
    secret = None
    if args.superexec_auth_secret_file is not None:
        from flwr.supercore.auth import load_superexec_auth_secret  # noqa: PLC0415

        secret = load_superexec_auth_secret(secret_file=args.superexec_auth_secret_file)
    executor = executor or ForkExecutor(max_tasks=args.max_tasks)
    with _executor_injected(executor):
        run_superexec(
            runtime_api_address=args.runtime_api_address,
            insecure=args.insecure,
            root_certificates_path=args.root_certificates,
            superexec_auth_secret=secret,
            parent_pid=args.parent_pid,
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (``--help`` lists it); bad arguments exit 2."""
    parser = argparse.ArgumentParser(
        prog="python -m edgeai.agent.warm_exec",
        description="Warm SuperExec: ClientApps forked from one preloaded process. Run it "
        "next to `flower-supernode --isolation process`.",
    )
    parser.add_argument(
        "--runtime-api-address", required=True, help="the SuperNode's Runtime API HOST:PORT"
    )
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--insecure", action="store_true", help="Runtime API without TLS")
    tls.add_argument("--root-certificates", help="CA (PEM) of the Runtime API's TLS certificate")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    parser.add_argument("--superexec-auth-secret-file", type=Path)
    parser.add_argument("--max-tasks", type=int, default=4, help="ClientApps at once")
    parser.add_argument("--poll-s", type=float, help="task poll interval (Flower's default 1 s)")
    parser.add_argument(
        "--preload",
        action="append",
        metavar="MODULE",
        help="module to import before forking (repeatable; default: Flower, edgeai's "
        "ClientApp, Opacus)",
    )
    args = parser.parse_args(argv)
    if args.max_tasks < 1:
        parser.error(f"--max-tasks must be at least 1, got {args.max_tasks}")
    if args.poll_s is not None and not 0.01 <= args.poll_s <= 60:
        parser.error(f"--poll-s must be between 0.01 and 60 s, got {args.poll_s}")
    args.preload = tuple(args.preload or DEFAULT_PRELOAD)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: ``python -m edgeai.agent.warm_exec``."""
    args = parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        seconds = preload(args.preload)
    except ImportError as exc:
        log.error("cannot preload %s: %s (install edgeai[train])", exc.name, exc)
        sys.exit(EXIT_PRELOAD_FAILED)
    # Children would otherwise scan (and so copy-on-write) every preloaded object at their
    # first collection: https://docs.python.org/3/library/gc.html#gc.freeze
    gc.freeze()
    threads = os_threads()
    # Readiness for supervisors and tests: one line, then the loop.
    print(
        f"{READY_LINE}: {len(args.preload)} modules in {seconds:.2f} s, "
        f"{threads} OS threads, pid {os.getpid()}",
        file=sys.stderr,
        flush=True,
    )
    serve(args)


if __name__ == "__main__":
    main()
