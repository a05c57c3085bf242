"""Run an experiment on Flower's Simulation Engine (Ray) or batched in-process (vmap)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from edgeai.errors import SimulationError
from edgeai.flower.client_app import app as default_client_app
from edgeai.flower.experiment import Experiment
from edgeai.flower.loop import RoundOutcome, RoundSink, ServerPlan
from edgeai.flower.plan import ClientPlan
from edgeai.flower.records import FinalState, RoundRecord
from edgeai.flower.server_app import client_plan, make_server_app
from edgeai.simulation.engine import init_ray
from edgeai.simulation.fleet import FleetRound
from edgeai.simulation.warm import start_warming


@dataclass
class SimulationResult:
    """Everything a run produced, in memory; ``write_outputs`` puts it on disk."""

    experiment: Experiment
    plan: ClientPlan
    rounds: list[RoundRecord] = field(default_factory=list)
    final: FinalState | None = None
    startup_seconds: float = 0.0  # from run_experiment's call, not the process start
    total_seconds: float = 0.0
    ledger_dir: Path | None = None
    # [simulation.fleet]: per round, the simulated time, who was online, who was dropped.
    fleet_rounds: dict[int, FleetRound] = field(default_factory=dict)


class _ResultSink(RoundSink):
    """Collects the rounds and the final state into ``result``; tells ``on_round`` of each."""

    def __init__(
        self,
        result: SimulationResult,
        on_round: Callable[[RoundRecord], None] | None,
        t0: float,
    ) -> None:
        self.result = result
        self.on_round = on_round
        self.first_round_end = t0

    def round_done(self, outcome: RoundOutcome) -> None:
        """Keep the record; a round nobody could contribute to ends the simulation."""
        record = outcome.record
        fleet = self.result.fleet_rounds.get(record.round)
        if record.accepted == 0 and record.refused == 0 and not (fleet and fleet.dropped):
            # Nothing to aggregate: a misconfigured client fails the same way every round
            # (a round whose replies all came after the fleet's deadline is merely lost).
            first = record.problems[0] if record.problems else "no replies"
            raise SimulationError(f"round {record.round}: no client reply was usable; {first}")
        if not self.result.rounds:
            self.first_round_end = time.perf_counter()
        self.result.rounds.append(record)
        if self.on_round is not None:
            self.on_round(record)

    def run_ended(self, final: FinalState) -> None:
        """Keep the final model and privacy state."""
        self.result.final = final


def backend_config(exp: Experiment) -> dict[str, Any]:
    """Flower's Ray backend settings for this experiment (Ray itself: ``init_ray``)."""
    return {"client_resources": {"num_cpus": exp.simulation.cpus_per_client, "num_gpus": 0.0}}


def run_experiment(
    exp: Experiment,
    on_round: Callable[[RoundRecord], None] | None = None,
    client_app: ClientApp | None = None,
    ledger_dir: Path | None = None,
    central_state_path: Path | None = None,
    *,
    wrap_grid: GridWrap | None = None,
) -> SimulationResult:
    """Run ``exp`` through Flower's simulation engine; blocks until the last round.

    ``client_app`` replaces the standard ClientApp (tests use it to inject faults);
    it must live in an importable module, not ``__main__``.  With DP, every
    virtual device keeps its spend in the SQLite privacy ledger at
    ``ledger_dir`` (one file per device; default: a new temporary directory).
    With client-level DP the server's accountant is saved at ``central_state_path``
    after every round, and resumed from it. ``wrap_grid`` wraps the grid the server
    sees (tests record what it receives; not with ``[simulation.fleet]``).
    """
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    t0 = time.perf_counter()
    plan, n_train = client_plan(exp)
    if exp.privacy.enabled:
        if ledger_dir is None:
            ledger_dir = Path(tempfile.mkdtemp(prefix="edgeai-ledgers-"))
        ledger_dir.mkdir(parents=True, exist_ok=True)
        plan = plan.model_copy(update={"ledger_dir": str(ledger_dir)})
    result = SimulationResult(experiment=exp, plan=plan, ledger_dir=ledger_dir)

    sink = _ResultSink(result, on_round, t0)
    server_plan = ServerPlan(
        client=plan,
        num_clients=exp.federation.num_clients,
        clients_per_round=exp.federation.per_round,
        round_timeout_s=exp.federation.round_timeout_s,
        max_examples=n_train,
        central=exp.central_privacy,
        central_state_path=central_state_path,
        identify_nodes=True,  # node ids are random every run: sample by partition id
        # A fleet shows only its online nodes: wait for the sampled ones, not for all.
        min_nodes=exp.federation.per_round if exp.simulation.fleet else None,
    )
    start_warming(exp)  # partitions and σ while Ray starts (a no-op if the CLI did it)
    wrap = fleet_wrapper(exp, result)
    if wrap_grid is not None:
        if wrap is not None:
            raise SimulationError("wrap_grid and [simulation.fleet] both wrap the grid; use one")
        wrap = wrap_grid
    if exp.simulation.backend == "vmap":
        if client_app is not None:
            raise SimulationError("backend = 'vmap' runs the standard ClientApp's training only")
        run_batched(exp, make_server_app(server_plan, [sink]), wrap)
    else:
        _run_on_ray(exp, _wrapped(make_server_app(server_plan, [sink]), wrap), client_app)
    if result.final is None or (
        len(result.rounds) != exp.federation.rounds and result.final.stopped is None
    ):
        raise SimulationError(
            f"simulation of {exp.name!r} ended after {len(result.rounds)} of "
            f"{exp.federation.rounds} rounds; see the log above"
        )
    result.total_seconds = time.perf_counter() - t0
    # Start-up: to the end of round 1, less what a steady round takes (round 1 itself).
    steady = sorted(r.seconds for r in result.rounds[1:]) or [0.0]
    result.startup_seconds = sink.first_round_end - t0 - steady[len(steady) // 2]
    return result


GridWrap = Callable[[Grid], Grid]


def fleet_wrapper(exp: Experiment, result: SimulationResult) -> GridWrap | None:
    """Wraps a grid in the experiment's fleet (None without ``[simulation.fleet]``)."""
    config = exp.simulation.fleet
    if config is None:
        return None
    from edgeai.flower.tasks import load_config  # noqa: PLC0415
    from edgeai.simulation.fleet import Fleet, FleetGrid, measure_sample_seconds  # noqa: PLC0415

    seconds = config.sample_seconds or measure_sample_seconds(
        load_config(exp.task_config), exp.training.batch_size
    )
    fleet = Fleet(
        config,
        exp.federation.num_clients,
        seed=exp.seed,
        needed=exp.federation.per_round,
        batch_size=exp.training.batch_size,
        sample_seconds=seconds,
    )

    def wrap(grid: Grid) -> Grid:
        wrapped = FleetGrid(grid, fleet, identify_timeout_s=exp.federation.round_timeout_s)
        result.fleet_rounds = wrapped.rounds  # filled in as the rounds go
        return wrapped

    return wrap


def _wrapped(server_app: ServerApp, wrap: GridWrap | None) -> ServerApp:
    """``server_app``, run on ``wrap(grid)`` instead of the grid Flower gives it."""
    if wrap is None:
        return server_app
    outer = ServerApp()

    @outer.main()
    def main(grid: Grid, context: Context) -> None:
        server_app(grid=wrap(grid), context=context)

    return outer


def run_batched(exp: Experiment, server_app: ServerApp, wrap: GridWrap | None = None) -> None:
    """Run ``server_app`` on the in-process :class:`VmapGrid`, as Flower runs a ServerApp."""
    from flwr.app import RecordDict  # noqa: PLC0415
    from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: PLC0415
    from flwr.supercore.task_identity import TaskIdentity  # noqa: PLC0415

    from edgeai.simulation.vmap import VmapGrid  # noqa: PLC0415

    logging.getLogger("flwr").setLevel(logging.ERROR)  # as on Ray: our view reports progress
    grid: Grid = VmapGrid(exp.federation.num_clients, threads=exp.simulation.num_cpus)
    if wrap is not None:
        grid = wrap(grid)
    # Messages take their run id from the task identity (run_simulation sets it likewise).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    context = Context(
        run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(), run_config={}
    )
    try:
        server_app(grid=grid, context=context)
    except SimulationError:
        raise
    except Exception as exc:
        raise SimulationError(f"simulation of {exp.name!r} failed: {exc}") from exc


def _run_on_ray(exp: Experiment, server_app: ServerApp, client_app: ClientApp | None) -> None:
    from flwr.simulation import run_simulation  # noqa: PLC0415  (slow import, train extra)

    init_ray(exp.simulation)
    # Flower logs every round at INFO and warns that run_simulation is deprecated (see
    # docs/ARCHITECTURE.md); our own view reports progress, so keep only its errors.
    logging.getLogger("flwr").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # run_simulation's deprecation notice; see ARCHITECTURE.md
        try:
            run_simulation(
                server_app=server_app,
                client_app=client_app or default_client_app,
                num_supernodes=exp.federation.num_clients,
                backend_config=backend_config(exp),
            )
        except Exception as exc:
            raise SimulationError(f"simulation of {exp.name!r} failed: {exc}") from exc
