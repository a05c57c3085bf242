"""The agent's side of the federation: the SuperNode command line and the privacy ledger watch.

The ClientApp runs in processes the SuperNode starts, so the agent learns what training
did from the device's privacy ledger (one row per DP session, written in one transaction
by the ClientApp): a new row is a round joined; a budget that no further session fits is
budget exhausted.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from edgeai.agent.config import AgentConfig, FederationConfig
from edgeai.errors import ConfigError
from edgeai.plumbing.files import atomic_write
from edgeai.plumbing.processes import ExecutableNotFoundError, find_executable
from edgeai.plumbing.supervisor import Backoff, EventSink, ProcessSupervisor


def node_config(cfg: AgentConfig) -> dict[str, str]:
    """What the ClientApp reads from its node config (see ``edgeai.flower.client_app``)."""
    values = {
        "node-name": cfg.node,
        "profile": cfg.profile,
        "ledger-path": str(ledger_path(cfg)),
    }
    if cfg.data is not None:
        values["data-path"] = str(cfg.data)
    if cfg.task is not None:  # the ClientApp loads this, and checks it is the plan's task
        values["task-config"] = cfg.task.model_dump_json(exclude_defaults=True)
    return values


def ledger_path(cfg: AgentConfig) -> Path:
    """The device's privacy ledger (SQLite) under the state directory."""
    return cfg.state_dir / "privacy-ledger.sqlite"


def write_node_config(path: Path, values: dict[str, str]) -> Path:
    """Write the node config as TOML: SuperNode takes a ``.toml`` path, so paths need no quoting."""
    atomic_write(path, tomli_w.dumps(dict(sorted(values.items()))))
    return path


def warm(fed: FederationConfig) -> bool:
    """Whether ClientApps run in the warm forking SuperExec (Linux: fork + prctl)."""
    return fed.warm_clientapp and sys.platform == "linux"


def supernode_argv(fed: FederationConfig, superlink: str, node_config_file: Path) -> list[str]:
    """The ``flower-supernode`` command for this agent.

    With the warm SuperExec the SuperNode starts no ClientApp processes itself
    (``--isolation process``); :func:`superexec_argv` runs beside it.
    """
    try:
        program = find_executable(
            fed.executable,
            fix="install edgeai[train] (it brings Flower) or set federation.enabled = false",
        )
    except ExecutableNotFoundError as exc:
        raise ConfigError(f"federation.executable: {exc}") from exc
    argv = [
        program,
        "--superlink",
        superlink,
        "--node-config",
        str(node_config_file),
        "--host",
        "127.0.0.1",
        "--port",
        str(fed.runtime_port),
        "--isolation",
        "process" if warm(fed) else "subprocess",
    ]
    if fed.insecure:
        argv.append("--insecure")
    elif fed.root_certificates is not None:
        argv += ["--root-certificates", str(fed.root_certificates)]
    if fed.auth_private_key is not None:
        argv += ["--auth-supernode-private-key", str(fed.auth_private_key)]
    return argv


def superexec_argv(fed: FederationConfig) -> list[str]:
    """The warm SuperExec beside the SuperNode (it talks to its local Runtime API)."""
    return [
        sys.executable,
        "-m",
        "edgeai.agent.warm_exec",
        "--runtime-api-address",
        f"127.0.0.1:{fed.runtime_port}",
        "--insecure",  # loopback, to this device's own SuperNode
        "--poll-s",
        "0.1",
    ]


def start_federation(
    cfg: AgentConfig, superlink: str, on_event: EventSink
) -> tuple[ProcessSupervisor, ProcessSupervisor | None]:
    """Start the supervised SuperNode (and the warm SuperExec beside it); return both."""
    fed = cfg.federation
    node_file = write_node_config(cfg.state_dir / "node-config.toml", node_config(cfg))
    # SuperNode starts `flower-superexec` from PATH: make the one beside it findable.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", os.defpath)])
    env = {
        **os.environ,
        "PATH": path,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # SuperExec looks for new tasks every 1 s by default: up to a second per round.
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1",
    }
    backoff = Backoff(initial_s=fed.restart_initial_s, max_s=fed.restart_max_s)
    logs = cfg.state_dir / "logs"

    def supervised(name: str, argv: list[str]) -> ProcessSupervisor:
        sup = ProcessSupervisor(
            name, argv, env=env, backoff=backoff, on_event=on_event, log_path=logs / f"{name}.log"
        )
        sup.start()
        return sup

    supernode = supervised("supernode", supernode_argv(fed, superlink, node_file))
    # Started second: it retries until the SuperNode's Runtime API is up.
    superexec = supervised("superexec", superexec_argv(fed)) if warm(fed) else None
    return supernode, superexec


@dataclass(frozen=True)
class LedgerChange:
    """What the ledger shows since the last look."""

    new_rounds: tuple[tuple[str, int], ...]  # (run id, server round) of new DP sessions
    epsilon: float | None  # ε spent so far at the budget's δ (None: no budget yet)
    budget: float | None
    delta: float | None  # δ of the budget (ε is reported at it)
    exhausted: bool  # the last session's size no longer fits the budget


class LedgerWatch:
    """Reads the device's privacy ledger; each :meth:`poll` reports what changed."""

    def __init__(self, path: Path, subject: str) -> None:
        self.path = path
        self.subject = subject
        self._seen = 0

    def poll(self) -> LedgerChange | None:
        """Return the change since the last poll, or None if there is nothing new."""
        if not self.path.exists():
            return None
        from edgeai.privacy.ledger import PrivacyLedger  # noqa: PLC0415

        with PrivacyLedger(self.path) as ledger:
            sessions = ledger.sessions(self.subject)
            if len(sessions) <= self._seen:
                return None
            new = sessions[self._seen :]
            self._seen = len(sessions)
            budget = ledger.budget(self.subject)
            spent = ledger.spent(self.subject) if budget is not None else None
            last = sessions[-1]
            planned = (last.noise_multiplier, last.sample_rate, last.steps)
            exhausted = budget is not None and not ledger.check(self.subject, planned).allowed
        return LedgerChange(
            tuple((s.run_id, s.server_round) for s in new),
            spent,
            budget.epsilon if budget is not None else None,
            budget.delta if budget is not None else None,
            exhausted,
        )
