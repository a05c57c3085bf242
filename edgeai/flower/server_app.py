"""The ServerApps: one round loop (:mod:`edgeai.flower.loop`), simulated or deployed.

- :func:`make_server_app` builds the simulation's app (``edgeai simulate`` hands it to
  Flower's Simulation Engine), reporting to the sinks it is given.
- :data:`app` is the deployed one. The SuperLink starts it
  (``serverapp = "edgeai.flower.server_app:app"`` in the app's ``pyproject.toml``, see
  :mod:`edgeai.server.superlink.runs`); its run config carries one key, ``spec``: the path of
  the :class:`~edgeai.flower.runspec.RunSpec` JSON. It resumes from the run's
  newest checkpoint and plugs in a checkpoint, a ``rounds.jsonl`` line and a
  ``status.json`` update per round.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from edgeai.errors import ConfigError, DataError
from edgeai.flower.experiment import Experiment
from edgeai.flower.loop import RoundLoop, RoundSink, ServerPlan, Start
from edgeai.flower.plan import ClientPlan
from edgeai.flower.records import FinalState
from edgeai.flower.runspec import (
    SPEC_KEY,
    RunPaths,
    RunSpec,
    RunState,
    read_run_spec,
    write_status,
)
from edgeai.flower.sinks import CheckpointSink, RoundLogSink
from edgeai.flower.tasks import load_config, task_datasets
from edgeai.models.checkpoint import (
    EPSILON_KEY,
    RUN_ID_KEY,
    SPEC_FINGERPRINT_KEY,
    Checkpoint,
    load_checkpoint,
)
from edgeai.task.batches import size_of

log = logging.getLogger(__name__)
app = ServerApp()


def client_plan(exp: Experiment) -> tuple[ClientPlan, int]:
    """The plan every client receives (the task, its name and version), and the train size."""
    task = load_config(exp.task_config)
    train, _ = task_datasets(exp.task_config)
    return ClientPlan(
        task=exp.task_config,
        task_name=task.name,
        task_version=task.version,
        data=exp.data,
        training=exp.training,
        privacy=exp.privacy,
        num_rounds=exp.federation.rounds,
        seed=exp.seed,
        strategy=exp.strategy,
        attack=exp.attack,
    ), size_of(train)


def make_server_app(plan: ServerPlan, sinks: Sequence[RoundSink]) -> ServerApp:
    """A ServerApp that runs ``plan`` from round 1 and reports to ``sinks`` (simulation)."""
    sim_app = ServerApp()

    @sim_app.main()
    def main(grid: Grid, context: Context) -> None:  # noqa: ARG001  (Flower's signature)
        RoundLoop(plan, Start(seed=plan.client.seed), sinks).run(grid)

    return sim_app


# -- the deployed run -----------------------------------------------------------------------


class StatusSink(RoundSink):
    """Keeps the run's ``status.json`` saying what it does, for the server and operators."""

    def __init__(self, paths: RunPaths, run_id: int) -> None:
        self.paths = paths
        self.run_id = run_id

    def write(self, state: RunState, **fields: object) -> None:
        """Replace ``status.json`` with ``state`` and ``fields``."""
        write_status(self.paths, state, run_id=self.run_id, **fields)

    def round_started(self, server_round: int, needed: int) -> None:  # noqa: D102
        self.write("waiting-for-nodes", round=server_round, needed=needed)

    def round_sampled(self, server_round: int, sampled: int) -> None:  # noqa: D102
        self.write("running", round=server_round, sampled=sampled)

    def run_failed(self, server_round: int, error: Exception) -> None:  # noqa: D102
        self.write("failed", round=server_round, reason=str(error))

    def run_ended(self, final: FinalState) -> None:  # noqa: D102
        if final.stopped is not None:
            self.write("stopped", round=final.round, reason=final.stopped)
        else:
            self.write("finished", round=final.round, first_round=final.first_round)


def latest_checkpoint(paths: RunPaths, spec: RunSpec) -> Checkpoint | None:
    """The newest readable checkpoint of this run, or None to start from round 1.

    Raises
    ------
    ConfigError
        The checkpoints belong to a different model, data set or seed.
    """
    for path in reversed(paths.checkpoint_files()):
        try:
            ckpt = load_checkpoint(path)
        except DataError as exc:  # writes are atomic; still, never die on one bad file
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if ckpt.provenance.get(SPEC_FINGERPRINT_KEY) != spec.fingerprint():
            raise ConfigError(
                f"{path} was written by a run of another model, data set or seed "
                f"(spec {ckpt.provenance.get(SPEC_FINGERPRINT_KEY)}, this one "
                f"{spec.fingerprint()}); use a new out_dir, or remove its checkpoints to "
                "start over"
            )
        return ckpt
    return None


def resume_point(paths: RunPaths, spec: RunSpec) -> Start:
    """Round 1, or the round after the run's newest checkpoint, with its weights and ε."""
    seed = spec.experiment.seed
    ckpt = latest_checkpoint(paths, spec)
    if ckpt is None:
        return Start(round=1, seed=seed + 1)
    first = int(ckpt.round or 0) + 1
    eps = ckpt.provenance.get(EPSILON_KEY)
    log.info("resuming from %s: round %d", paths.checkpoint(first - 1), first)
    # Reseeded per first round: a resumed run must not replay its first rounds' sampling.
    return Start(
        round=first,
        seed=seed + first,
        state=ckpt.state(),
        worst_epsilon=float(eps) if isinstance(eps, (int, float)) else None,
    )


def run_deployed(grid: Grid, spec: RunSpec, run_id: int) -> FinalState:
    """Train ``spec`` on the connected nodes, resuming from its newest checkpoint.

    Raises
    ------
    NotEnoughNodesError
        Fewer than ``spec.needed_nodes`` connected within ``spec.node_wait_s``.
    """
    exp, paths = spec.experiment, RunPaths(spec.out_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    status = StatusSink(paths, run_id)
    status.write("starting")
    client, _ = client_plan(exp)
    plan = ServerPlan(
        client=client,
        num_clients=exp.federation.num_clients,
        clients_per_round=exp.federation.per_round,
        round_timeout_s=exp.federation.round_timeout_s,
        max_examples=spec.max_examples,
        central=exp.central_privacy,
        central_state_path=paths.client_dp_state,
        min_nodes=spec.needed_nodes,
        node_wait_s=spec.node_wait_s,
        reply_poll_s=spec.reply_poll_s,
    )
    provenance = {SPEC_FINGERPRINT_KEY: spec.fingerprint(), RUN_ID_KEY: run_id}
    sinks = [
        CheckpointSink(client, paths.checkpoint, provenance),
        RoundLogSink(paths.rounds, {"run_id": run_id}),
        status,
    ]
    return RoundLoop(plan, resume_point(paths, spec), sinks).run(grid)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: read the spec named by the run config and train it."""
    raw = context.run_config.get(SPEC_KEY)
    if not raw:
        raise ConfigError(f"run config has no {SPEC_KEY!r}: submit runs with edgeai's submit()")
    run_deployed(grid, read_run_spec(Path(str(raw))), context.run_id)
