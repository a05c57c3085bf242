"""What runs in a child forked by the warm SuperExec (:mod:`edgeai.agent.warm_exec`).

The child runs one ClientApp task through Flower's ``run_clientapp``, as ``flwr-clientapp``
would, after dropping what it inherited and must not run or share (the parent's signal
handlers and Flower exit handlers, numpy's global random stream), and always leaves
through ``os._exit``. Why each step is needed: the module docstring of ``warm_exec``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flwr.supercore.superexec.executor import ExecutionSpec


def child_exit_code(exc: BaseException | None) -> int:
    """The exit status of a child that ended with ``exc`` (``None``: returned normally)."""
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        code = exc.code
        if code is None:
            return 0
        return code if isinstance(code, int) else 1
    return 1


def describe_status(status: int) -> str:
    """``exit 3`` / ``killed by SIGKILL`` for a ``waitpid`` status."""
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.waitstatus_to_exitcode(status)}"


def run_task(spec: ExecutionSpec) -> None:
    """Run one ClientApp task in this (forked) process, as ``flwr-clientapp`` would."""
    from flwr.supercore.tls import validate_and_resolve_root_certificates  # noqa: PLC0415
    from flwr.supernode.runtime.run_clientapp import run_clientapp  # noqa: PLC0415

    run_clientapp(
        runtime_api_address=spec.runtime_api_address,
        token=spec.token,
        insecure=spec.insecure,
        certificates=validate_and_resolve_root_certificates(
            spec.root_certificates_path, spec.insecure
        ),
        parent_pid=None,  # outlive a killed SuperExec: see the module docstring
        runtime_dependency_install=spec.runtime_dependency_install,
    )


def _forget_parent_state(suppress_output: bool) -> None:
    """Undo what the child inherited from the SuperExec loop but must not run or share."""
    for sig in (signal.SIGTERM, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # The parent's handlers close its Runtime API client and executor (run_superexec.py).
    from flwr.supercore.exit import exit_handler  # noqa: PLC0415

    exit_handler.registered_exit_handlers.clear()
    if suppress_output:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        # Siblings forked from one parent would otherwise share one global stream.
        numpy.random.seed()


def child_main(spec: ExecutionSpec, task: Callable[[ExecutionSpec], None] = run_task) -> None:
    """Body of a forked child: run ``task`` and ``os._exit`` with its status; never returns."""
    error: BaseException | None = None
    try:
        _forget_parent_state(spec.suppress_output)
        task(spec)
    except BaseException as exc:  # every way out must end in os._exit
        error = exc
        if not isinstance(exc, SystemExit | KeyboardInterrupt):
            traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(child_exit_code(error))
