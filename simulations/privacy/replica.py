"""An in-process replica of ``edgeai simulate`` for runs where every device trains each round.

The same ClientPlan and ``local_train`` (DP-SGD, ledgers) per device, FedAvg
weighted by examples, the same seeds — without Ray, so a sweep runs in one process and the
ScatterNet features are computed once. It reproduced the engine's quickstart exactly
(93.50 % validation, 93.10 % held-out); use the engine for anything it does not cover
(sampling, strategies, attacks, client-level DP).

Usage: ``python simulations/privacy/replica.py EXP.toml ['{"training.learning_rate": 1.0}']``
prints validation and held-out accuracy and the worst device's ε every 5 rounds.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from edgeai.data.datasets import load_holdout
from edgeai.flower.client_app import Device, local_train
from edgeai.flower.experiment import load_experiment
from edgeai.flower.server_app import client_plan
from edgeai.flower.tasks import build_seeded, load_config, task_datasets
from edgeai.flower.training import evaluate


def main(argv: list[str]) -> None:
    """Run the experiment ``argv[0]`` with the dotted overrides of ``argv[1]`` (JSON)."""
    warnings.filterwarnings("ignore")
    overrides = json.loads(argv[1]) if len(argv) > 1 else {}
    exp = load_experiment(Path(argv[0]), overrides)
    if exp.federation.per_round != exp.federation.num_clients:
        raise SystemExit("the replica trains every device every round; use edgeai simulate")
    plan, _ = client_plan(exp)
    ledgers = Path(tempfile.mkdtemp())
    plan = plan.model_copy(update={"ledger_dir": str(ledgers)})
    task = load_config(exp.task_config)
    _, val = task_datasets(exp.task_config)
    holdout = int(str(exp.task_config.options.get("holdout", 0)))
    held = load_holdout(str(exp.task_config.options.get("dataset", "mnist")), holdout)
    held_ds = TensorDataset(torch.from_numpy(held.x), torch.from_numpy(held.y))
    model = build_seeded(task, exp.seed)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    k = exp.federation.num_clients
    started = time.process_time()
    for rnd in range(1, exp.federation.rounds + 1):
        replies = []
        for i in range(k):
            device = Device(f"client-{i}", ledgers / f"client-{i}.sqlite")
            node = {"partition-id": i, "num-partitions": k}
            new, metrics = local_train(plan, state, node, rnd, device)
            replies.append((new, int(metrics["num-examples"]), float(metrics.get("epsilon", 0))))
        total = sum(n for _, n, _ in replies)
        state = {
            key: (sum(r[key].double() * n for r, n, _ in replies) / total).to(state[key].dtype)
            for key in state
        }
        if rnd % 5 == 0 or rnd == exp.federation.rounds:
            model.load_state_dict(state)
            v = evaluate(model, val, task)[0]["accuracy"]
            h = evaluate(model, held_ds, task)[0]["accuracy"]
            eps = max(e for *_, e in replies)
            cpu = time.process_time() - started
            print(
                f"{overrides} round {rnd} val {v:.4f} heldout {h:.4f} eps {eps:.3f} cpu {cpu:.0f}s"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
