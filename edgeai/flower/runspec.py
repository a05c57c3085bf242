"""The deployed run's spec (what the server hands its ServerApp) and the files a run writes.

The ServerApp runs in a process the SuperLink starts; it learns what to do from one
run-config key, ``spec``: the path of a JSON :class:`RunSpec` the server wrote. The
training settings are the experiment model of ``edgeai simulate`` (one description of a
run for simulation and deployment).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from edgeai.configfile import Frozen, parse
from edgeai.errors import ConfigError
from edgeai.flower.experiment import Experiment
from edgeai.plumbing.files import atomic_write

SPEC_KEY = "spec"  # the run-config key that carries the spec path

RunState = Literal["starting", "waiting-for-nodes", "running", "finished", "failed", "stopped"]


def check_deployable(exp: Experiment) -> None:
    """Refuse what only a simulation can run: ``[attack]`` (a fleet's clients are devices).

    Raises
    ------
    ConfigError
        The section and the fix.
    """
    if exp.attack is not None:
        raise ConfigError(
            "[attack] is for simulation only (a deployed fleet's clients are real devices); "
            "remove it from the run's experiment"
        )


class RunSpec(Frozen):
    """A deployed training run.

    ``experiment.federation``: ``num_clients`` is the fleet size the sampling fraction is
    taken of, ``clients_per_round`` the nodes asked per round, ``rounds`` the total
    (a resumed run continues to it) and ``round_timeout_s`` how long a round waits for
    replies (a node that died mid-round is waited for this long at most).
    """

    experiment: Experiment
    out_dir: Path
    # Nodes that must be connected before a round starts; default: clients per round.
    min_nodes: int | None = Field(default=None, ge=1)
    # Give up (run fails, status says why) if fewer than min_nodes connect within this.
    node_wait_s: float = Field(default=300.0, gt=0)
    max_examples: int = Field(default=1_000_000, ge=1)
    # How often the ServerApp polls the SuperLink for replies (Flower's own: every 3 s).
    reply_poll_s: float = Field(default=0.1, gt=0)

    @field_validator("experiment")
    @classmethod
    def _no_attack(cls, exp: Experiment) -> Experiment:
        check_deployable(exp)
        return exp

    @property
    def needed_nodes(self) -> int:
        """Nodes a round waits for before it starts."""
        return self.min_nodes or self.experiment.federation.per_round

    def fingerprint(self) -> str:
        """Hash of what gives the weights their meaning; a resume must match it."""
        exp = self.experiment
        basis = {
            # The legacy [model] form keeps its fingerprint (running runs resume).
            "model": exp.model.model_dump(mode="json")
            if exp.model is not None
            else exp.task_config.model_dump(mode="json", exclude={"path"}),
            "data": exp.data.model_dump(mode="json"),
            "seed": exp.seed,
        }
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:16]


class RunPaths:
    """Where a run's files are, under ``out_dir``."""

    def __init__(self, out_dir: Path) -> None:
        self.root = out_dir
        self.checkpoints = out_dir / "checkpoints"
        self.rounds = out_dir / "rounds.jsonl"
        self.status = out_dir / "status.json"
        self.client_dp_state = out_dir / "client-dp-accountant.json"
        self.spec = out_dir / "run-spec.json"

    def checkpoint(self, server_round: int) -> Path:
        """The checkpoint written after ``server_round``."""
        return self.checkpoints / f"round-{server_round:04d}.npz"

    def checkpoint_files(self) -> list[Path]:
        """Every round checkpoint, oldest first."""
        return sorted(self.checkpoints.glob("round-*.npz"))


def write_run_spec(spec: RunSpec) -> Path:
    """Write ``spec`` to ``out_dir/run-spec.json``; return the path to submit."""
    path = RunPaths(spec.out_dir).spec
    # exclude_unset: some models check which fields were given (alpha only with dirichlet).
    atomic_write(path, spec.model_dump_json(indent=2, exclude_unset=True).encode())
    return path


def read_run_spec(path: Path) -> RunSpec:
    """Read a spec written by :func:`write_run_spec`."""
    if not path.is_file():
        raise ConfigError(f"run spec {path}: no such file (run config key {SPEC_KEY!r})")
    try:
        raw: Any = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run spec {path}: not JSON ({exc})") from exc
    return parse(RunSpec, raw, str(path))


def write_status(paths: RunPaths, state: RunState, **fields: object) -> None:
    """Replace ``status.json``: what the run is doing now, for operators and tools."""
    body = {"state": state, "updated": time.time(), **fields}
    atomic_write(paths.status, json.dumps(body, indent=2).encode())


def read_status(paths: RunPaths) -> dict[str, Any] | None:
    """The run's last status, or None before the ServerApp wrote one."""
    try:
        data: dict[str, Any] = json.loads(paths.status.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data
