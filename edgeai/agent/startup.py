"""Before the agent starts anything: its exit codes, its state directory, the files it names."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from edgeai.agent.config import AgentConfig
from edgeai.errors import ConfigError, EdgeAIError


class ExitCode:
    """Exit codes of ``edgeai agent run`` (systemd: ``RestartPreventExitStatus=2``)."""

    OK = 0  # stopped by SIGTERM/SIGINT after draining and flushing
    FAILED = 1  # an unexpected error; the traceback is in the log
    BAD_CONFIG = 2  # agent.toml, the profile or a file it names is invalid
    CANNOT_START = 3  # a port is taken or the state directory is unusable


class StateDirError(EdgeAIError, OSError):
    """The agent cannot start here: its state directory is unusable (exit code 3)."""


def prepare_state_dir(path: Path) -> None:
    """Create ``state_dir`` if needed and prove it is a writable directory.

    Raises
    ------
    StateDirError
        It is a file, cannot be created, or cannot be written; the message says which.
    """
    fix = "point state_dir in agent.toml at a writable directory"
    if path.exists() and not path.is_dir():
        raise StateDirError(f"state_dir {path}: exists and is not a directory ({fix})")
    probe = path / f".edgeai-probe.{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StateDirError(
            f"state_dir {path}: not writable ({exc.strerror or exc}; {fix})"
        ) from exc


def check_named_files(config: AgentConfig) -> None:
    """Fail at start, not hours later in a retry loop, when a file agent.toml names is missing.

    Raises
    ------
    ConfigError
        The field, the path and the fix.
    """
    fed, upd = config.federation, config.updates
    named: list[tuple[str, Path | None]] = [
        ("federation.root_certificates", fed.root_certificates),
        ("federation.auth_private_key", fed.auth_private_key),
    ]
    if upd.enabled:
        named.append(("updates.trusted_root", upd.trusted_root))
    if fed.enabled:
        named.append(("data", config.data))
    for field, path in named:
        if path is not None and not path.is_file():
            what = "is not a file" if path.exists() else "does not exist"
            raise ConfigError(f"agent.toml: {field} = {str(path)!r} {what}: fix the path")
    task = config.task
    if fed.enabled and task is not None and task.ref is not None:
        _check_task_module(task.ref, Path(task.path or "."))


def _check_task_module(ref: str, folder: Path) -> None:
    # Found, not imported: importing a task pulls in torch, which the agent itself never
    # needs (the ClientApp processes load the task).
    module = ref.partition(":")[0]
    top = module.split(".")[0]
    if (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file():
        return
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(
            f"agent.toml: task.ref = {ref!r}: module {module!r} is neither in {folder} "
            "(task.path) nor installed; copy the task's module there or install it"
        )
