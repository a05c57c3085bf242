"""The deployed ServerApp: FedAvg with reply validation, DP, a checkpoint every round, resume.

The SuperLink starts it (``serverapp = "edgeai.federation.server_app:app"`` in the app's
``pyproject.toml``, see :mod:`edgeai.federation.runs`); its run config carries one key,
``spec``: the path of the :class:`~edgeai.federation._flower_spec.RunSpec` JSON.

It runs its own round loop instead of ``Strategy.start`` (the strategies are the ones
simulation uses) for three reasons: a resumed run continues the round numbering from
its last checkpoint; every round ends with a checkpoint and a ``rounds.jsonl`` line; and
replies are polled every ``reply_poll_s`` rather than every 3 s
(``flwr/superlink/grid/http_grid.py`` ``send_and_receive`` sleeps 3 s between pulls).
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid, ServerApp

from edgeai.data.datasets import load_dataset
from edgeai.errors import ConfigError, DataError
from edgeai.federation._flower_spec import (
    SPEC_KEY,
    RunPaths,
    RunSpec,
    read_run_spec,
    write_status,
)
from edgeai.fl.client_app import plan_config
from edgeai.fl.plan import ClientPlan
from edgeai.fl.server_app import RoundRecord
from edgeai.fl.strategy import (
    ClientLevelDPFedAvg,
    NotEnoughNodesError,
    RoundStats,
    ServerBudgetExhaustedError,
    ValidatingFedAvg,
)
from edgeai.fl.training import evaluate
from edgeai.fl.validation import reference_of
from edgeai.models import build_model
from edgeai.models.checkpoint import (
    Checkpoint,
    checkpoint_from_state,
    load_checkpoint,
    save_checkpoint,
)
from edgeai.simulation.runner import client_plan

log = logging.getLogger(__name__)
app = ServerApp()


class MessageGrid(Protocol):
    """The part of Flower's ``Grid`` the reply polling uses."""

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]: ...  # noqa: D102
    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]: ...  # noqa: D102


def send_and_receive(
    grid: MessageGrid,
    messages: Sequence[Message],
    *,
    timeout_s: float,
    poll_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[list[Message], int]:
    """Push ``messages``; pull replies every ``poll_s`` until all came or ``timeout_s`` passed.

    Returns the replies and how many never came. A node the SuperLink declares
    unavailable (missed heartbeats) comes back as an error reply, not a missing one.
    """
    pending = set(grid.push_messages(messages))
    deadline = clock() + timeout_s
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {m.metadata.reply_to_message_id for m in got}
        if not pending or clock() >= deadline:
            break
        sleep(poll_s)
    return replies, len(pending)


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
        if ckpt.provenance.get("spec") != spec.fingerprint():
            raise ConfigError(
                f"{path} was written by a run of another model, data set or seed "
                f"(spec {ckpt.provenance.get('spec')}, this one {spec.fingerprint()}); "
                "use a new out_dir, or remove its checkpoints to start over"
            )
        return ckpt
    return None


def _reply_timing(replies: Iterable[Message]) -> dict[str, float]:
    # The ClientApp reports its own training time and how old its process was when it
    # replied: the difference is the process start (Python, torch, Flower, data).
    train, startup = [], []
    for msg in replies:
        if msg.has_error() or len(msg.content.metric_records) != 1:
            continue
        metrics = next(iter(msg.content.metric_records.values()))
        if "train-seconds" in metrics:
            train.append(float(metrics["train-seconds"]))  # type: ignore[arg-type]
            if "process-seconds" in metrics:
                startup.append(float(metrics["process-seconds"]) - train[-1])  # type: ignore[arg-type]
    timing: dict[str, float] = {}
    if train:
        timing["compute_s"] = max(train)
    if startup:
        timing["clientapp_start_s"] = max(startup)
    return timing


def run_federation(grid: Grid, spec: RunSpec, run_id: int) -> str:  # noqa: PLR0915
    """Train ``spec`` on the connected nodes; return how it ended (``finished``/``stopped``).

    Raises
    ------
    NotEnoughNodesError
        Fewer than ``spec.needed_nodes`` connected within ``spec.node_wait_s``.
    """
    exp = spec.experiment
    fed = exp.federation
    paths = RunPaths(spec.out_dir)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_status(paths, "starting", run_id=run_id)
    plan, _ = client_plan(exp)
    split = load_dataset(exp.data.dataset, exp.data.validation_fraction, exp.data.split_seed)
    model = build_model(plan.model, plan.input_shape, plan.num_classes, seed=plan.seed)
    resumed = latest_checkpoint(paths, spec)
    first, worst_eps = 1, None
    if resumed is not None:
        model.load_state_dict(
            {k: torch.from_numpy(np.array(v)) for k, v in resumed.state().items()}
        )
        first = int(resumed.round or 0) + 1
        eps = resumed.provenance.get("epsilon")
        worst_eps = float(eps) if isinstance(eps, (int, float)) else None
        log.info("resuming from %s: round %d", paths.checkpoint(first - 1), first)
    arrays = ArrayRecord(model.state_dict())
    random.seed(plan.seed + first)  # FedAvg samples nodes with the global `random`
    common: dict[str, Any] = {
        "reference": reference_of({k: v.numpy() for k, v in arrays.items()}),
        "max_examples": spec.max_examples,
        "node_wait_s": spec.node_wait_s,
        "fraction_train": fed.per_round / fed.num_clients,
        "min_train_nodes": spec.needed_nodes,
        "min_available_nodes": spec.needed_nodes,
        "fraction_evaluate": 0.0,
    }
    strategy: ValidatingFedAvg
    if exp.central_privacy.enabled:
        strategy = ClientLevelDPFedAvg(
            central=exp.central_privacy,
            num_clients=fed.num_clients,
            clients_per_round=fed.per_round,
            num_rounds=fed.rounds,
            state_path=paths.client_dp_state,  # persisted each round; resumed from here
            seed=plan.seed + first,
            **common,
        )
    else:
        strategy = ValidatingFedAvg(**common)
    ended = "finished"
    for rnd in range(first, fed.rounds + 1):
        started = time.perf_counter()
        write_status(paths, "waiting-for-nodes", run_id=run_id, round=rnd, needed=spec.needed_nodes)
        try:
            messages = list(strategy.configure_train(rnd, arrays, plan_config(plan), grid))
        except NotEnoughNodesError as exc:
            write_status(paths, "failed", run_id=run_id, round=rnd, reason=str(exc))
            raise
        except ServerBudgetExhaustedError as exc:
            write_status(paths, "stopped", run_id=run_id, round=rnd, reason=str(exc))
            ended = "stopped"
            break
        write_status(paths, "running", run_id=run_id, round=rnd, sampled=len(messages))
        replies, missing = send_and_receive(
            grid, messages, timeout_s=fed.round_timeout_s, poll_s=spec.reply_poll_s
        )
        replied = time.perf_counter()
        new, _ = strategy.aggregate_train(rnd, replies)
        if new is not None:
            arrays = new
        model.load_state_dict(arrays.to_torch_state_dict())
        accuracy, loss = evaluate(model, split.validation)
        stats = strategy.stats.get(rnd, RoundStats())
        if stats.epsilon is not None:
            worst_eps = max(stats.epsilon, worst_eps or 0.0)
        record = RoundRecord.of(
            rnd,
            accuracy,
            loss,
            worst_eps,
            stats,
            time.perf_counter() - started,
            plan.privacy.delta if plan.privacy.enabled else None,
            exp.central_privacy.delta if exp.central_privacy.enabled else None,
        )
        _save_round(paths, spec, plan, arrays, record=record, run_id=run_id)
        extra = {"run_id": run_id, "missing": missing, "wait_s": replied - started}
        _append_round(paths, {**asdict(record), **extra, **_reply_timing(replies)})
        if stats.sampled and stats.refused == stats.sampled:
            reason = "every sampled device's privacy budget is exhausted"
            write_status(paths, "stopped", run_id=run_id, round=rnd, reason=reason)
            ended = "stopped"
            break
    if ended == "finished":
        write_status(paths, "finished", run_id=run_id, round=fed.rounds, first_round=first)
    return ended


def _save_round(
    paths: RunPaths,
    spec: RunSpec,
    plan: ClientPlan,
    arrays: ArrayRecord,
    *,
    record: RoundRecord,
    run_id: int,
) -> None:
    provenance = {
        "spec": spec.fingerprint(),
        "run_id": run_id,
        "accuracy": record.accuracy,
        "loss": record.loss,
        "epsilon": record.epsilon,
        "delta": record.delta,
        "client_epsilon": record.client_epsilon,
        "client_delta": record.client_delta,
    }
    state = {k: v.numpy() for k, v in arrays.items()}
    ckpt = checkpoint_from_state(
        plan.model,
        plan.input_shape,
        plan.num_classes,
        state,
        round_=record.round,
        provenance=provenance,
    )
    save_checkpoint(ckpt, paths.checkpoint(record.round))


def _append_round(paths: RunPaths, line: dict[str, Any]) -> None:
    with paths.rounds.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(line) + "\n")


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower's entry point: read the spec named by the run config and train it."""
    raw = context.run_config.get(SPEC_KEY)
    if not raw:
        raise ConfigError(f"run config has no {SPEC_KEY!r}: submit runs with edgeai's submit()")
    run_federation(grid, read_run_spec(Path(str(raw))), context.run_id)
