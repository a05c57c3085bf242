"""The reference side of the simulation benchmark, and a fast tuning loop.

Runs an experiment's federated rounds sequentially in this one process, in
plain PyTorch: no Flower, no Ray, no messages.  Same clients, same local
training code (``local_train``), same FedAvg weighting, same validation.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from edgeai.flower.client_app import device_of, local_train
from edgeai.flower.experiment import Experiment
from edgeai.flower.tasks import build_seeded, load_config, task_datasets
from edgeai.flower.training import evaluate
from edgeai.simulation.runner import client_plan
from edgeai.simulation.warm import warm_caches


@dataclass
class SeqRound:
    round: int
    accuracy: float
    epsilon: float | None
    seconds: float


def run_sequential(exp: Experiment, threads: int = 1) -> Iterator[SeqRound]:
    """Yield one record per round of FedAvg run sequentially in this process."""
    torch.set_num_threads(threads)
    plan, _ = client_plan(exp)
    ledger_dir = tempfile.mkdtemp(prefix="edgeai-seq-")
    plan = plan.model_copy(update={"ledger_dir": ledger_dir})
    warm_caches(exp)
    task = load_config(plan.task)
    _, validation = task_datasets(plan.task)
    model = build_seeded(task, plan.seed)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = random.Random(plan.seed)
    k = exp.federation.num_clients
    worst: float | None = None
    for rnd in range(1, exp.federation.rounds + 1):
        t0 = time.perf_counter()
        chosen = sorted(rng.sample(range(k), exp.federation.per_round))
        total = 0
        acc_state = {name: torch.zeros_like(v, dtype=torch.float64) for name, v in state.items()}
        for cid in chosen:
            node = {"partition-id": cid, "num-partitions": k, "torch-threads": threads}
            device = device_of(plan, node, cid, 0)
            new, metrics = local_train(plan, state, node, rnd, device)
            n = int(metrics["num-examples"])
            total += n
            for name, v in new.items():
                acc_state[name] += v.to(torch.float64) * n
            if "epsilon" in metrics:
                worst = max(worst or 0.0, float(metrics["epsilon"]))
        state = {name: (v / total).to(state[name].dtype) for name, v in acc_state.items()}
        model.load_state_dict(state)
        metrics_, _ = evaluate(model, validation, task)
        accuracy = next(iter(metrics_.values()))
        yield SeqRound(rnd, accuracy, worst, time.perf_counter() - t0)
