"""A minimal FedAvg loop in plain torch over a built-in task, for numbers before the wiring.

Reads the experiment TOML's ``[task]``, ``[federation]``, ``[training]`` and ``seed``, trains
exactly as the FedAvg paper (sample C·K clients, E local epochs of minibatch SGD at batch
size B, average weighted by samples), evaluates the task's metrics on its validation set
after every round, and writes one JSON object per round.

    .venv/bin/python bench/fedavg_task.py simulations/shakespeare.toml --out results/shk
"""

from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from edgeai.task import Task
from edgeai.task.builtin import RegressionTask, ShakespeareTask

TASKS: dict[str, type[Task]] = {"shakespeare": ShakespeareTask, "regression": RegressionTask}


def iid(n: int, k: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    return [part.tolist() for part in np.array_split(order, k)]


@torch.no_grad()
def evaluate(task: Task, model: torch.nn.Module, data: Any, batch: int = 1000) -> dict[str, float]:
    model.eval()
    sums: dict[str, float] = {}
    n = 0
    for x, y in DataLoader(data, batch_size=batch):
        out = model(x)
        for key, value in {"loss": float(task.loss(out, y)), **task.metrics(out, y)}.items():
            sums[key] = sums.get(key, 0.0) + value * len(y)
        n += len(y)
    return {k: v / n for k, v in sums.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("experiment", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    exp = tomllib.loads(args.experiment.read_text())
    fed, train = exp["federation"], exp.get("training", {})
    rounds = args.rounds or fed["rounds"]
    seed = exp.get("seed", 0)
    torch.manual_seed(seed)
    torch.set_num_threads(args.threads)
    task = TASKS[exp["task"]["name"]](**exp["task"].get("options", {}))
    train_set, val_set = task.datasets()
    k = fed["num_clients"]
    parts = task.partition(k, seed) or iid(len(train_set), k, seed)
    per_round = fed.get("clients_per_round") or max(1, round(fed.get("fraction_per_round", 1) * k))
    epochs, batch = train.get("local_epochs", 1), train.get("batch_size", 32)
    lr = train.get("learning_rate", 0.05)
    rng = np.random.default_rng(seed)
    model = task.build_model()
    args.out.mkdir(parents=True, exist_ok=True)
    log = (args.out / "metrics.jsonl").open("w")
    begin = time.perf_counter()
    for rnd in range(1, rounds + 1):
        chosen = rng.choice(k, size=per_round, replace=False)
        total = sum(len(parts[c]) for c in chosen)
        average = {name: torch.zeros_like(p) for name, p in model.state_dict().items()}
        for c in chosen:
            local = task.build_model()
            local.load_state_dict(model.state_dict())
            local.train()
            opt = torch.optim.SGD(local.parameters(), lr=lr)
            loader = DataLoader(Subset(train_set, parts[c]), batch_size=batch, shuffle=True)
            for _ in range(epochs):
                for x, y in loader:
                    opt.zero_grad()
                    task.loss(local(x), y).backward()
                    opt.step()
            for name, p in local.state_dict().items():
                average[name] += p * (len(parts[c]) / total)
        model.load_state_dict(average)
        row = {
            "round": rnd,
            **evaluate(task, model, val_set),
            "seconds": round(time.perf_counter() - begin, 1),
        }
        print(json.dumps(row), flush=True)
        log.write(json.dumps(row) + "\n")
        log.flush()
        # Every round, so a run cut short still leaves its latest global model.
        torch.save(model.state_dict(), args.out / "model.pt")


if __name__ == "__main__":
    main()
