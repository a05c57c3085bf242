"""Distributed DP in the round loop: ``[central_privacy] mode = "distributed"`` (issue 13).

Real Flower simulations (Ray) of 5 devices running edgeai's own ClientApp and round loop:
each device trains, clips its update, adds its noise share, and Flower's SecAgg+ masks
it. Everything the server received is searched for each device's update; the same search
over a trusted-server (client-level DP) run finds every one of them, so the test can fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray
from flwr.serverapp import Grid

from edgeai.flower.client_app import Device, local_train
from edgeai.flower.experiment import Experiment, load_experiment
from edgeai.flower.secagg import RecordingGrid, ServerView
from edgeai.flower.server_app import client_plan
from edgeai.flower.tasks import build_seeded, load_config
from edgeai.simulation.runner import SimulationResult, run_experiment
from tests.integration import dropout_app

pytestmark = pytest.mark.integration

N, Z, C, T = 5, 0.01, 1.0, 4
WATCHED = "3.weight"  # dp-cnn-tiny's largest array (3,200 numbers): the one searched for


def experiment(tmp_path: Path, mode: str) -> Experiment:
    path = tmp_path / f"{mode}.toml"
    survivors = f"min_survivors = {T}\n" if mode == "distributed" else ""
    path.write_text(
        f'name = "dd-{mode}"\nseed = 3\n[model]\nname = "dp-cnn-tiny"\n'
        '[data.partition]\nkind = "iid"\n'
        f"[federation]\nnum_clients = {N}\nrounds = 1\n"
        "[training]\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.5\n"
        f"[central_privacy]\nenabled = true\nnoise_multiplier = {Z}\nclip_norm = {C}\n"
        f'mode = "{mode}"\n{survivors}[simulation]\nnum_cpus = 2\n',
        encoding="utf-8",
    )
    return load_experiment(path)


def run(exp: Experiment, **kwargs: Any) -> tuple[SimulationResult, ServerView]:
    view = ServerView()

    def record(grid: Grid) -> Grid:
        return RecordingGrid(grid, view)

    return run_experiment(exp, wrap_grid=record, **kwargs), view


def updates(exp: Experiment) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """The initial model and each device's round-1 update, recomputed here (seeded)."""
    plan, _ = client_plan(exp)
    initial = build_seeded(load_config(plan.task), plan.seed).state_dict()
    deltas = []
    for p in range(N):
        new, _ = local_train(
            plan,
            initial,
            {"partition-id": p, "num-partitions": N},
            1,
            Device(f"client-{p}", None),
        )
        deltas.append({k: (new[k] - initial[k]).numpy() for k in initial})
    return {k: v.numpy() for k, v in initial.items()}, deltas


def clipped(delta: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    norm = float(np.sqrt(sum(np.sum(v.astype(np.float64) ** 2) for v in delta.values())))
    return {k: v * min(1.0, C / norm) for k, v in delta.items()}


def arrays_seen(view: ServerView) -> Iterator[np.ndarray]:
    """Every array of numbers in every message the server received, decoded."""
    for msg in view.received:
        for record in msg.content.array_records.values():
            for arr in record.values():
                try:
                    yield arr.numpy().ravel()
                except (ValueError, TypeError):
                    yield bytes_to_ndarray(arr.data).ravel()  # legacy np.save bytes
        for record in msg.content.config_records.values():
            for value in record.values():
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, bytes) and len(item) > 1_000:
                        try:
                            yield bytes_to_ndarray(item).ravel()
                        except ValueError:
                            continue  # key material, not an array


def best_match(view: ServerView, vector: np.ndarray, initial: np.ndarray) -> float:
    """The largest |correlation| of ``vector`` with anything the server got (or it - initial)."""
    best = 0.0
    for seen in arrays_seen(view):
        if seen.size != vector.size:
            continue
        for candidate in (seen.astype(np.float64), seen.astype(np.float64) - initial):
            if np.std(candidate) > 0:
                best = max(best, abs(float(np.corrcoef(candidate, vector)[0, 1])))
    return best


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    exp = experiment(tmp_path_factory.mktemp("dd"), "distributed")
    torch.set_num_threads(1)
    return updates(exp)


def test_the_server_gets_the_noisy_sum_and_no_single_update(
    tmp_path: Path, recomputed: Any
) -> None:
    initial, deltas = recomputed
    result, view = run(experiment(tmp_path, "distributed"))
    assert result.final is not None
    (record,) = result.rounds
    assert (record.sampled, record.accepted) == (N, N)
    # The new model is the initial one plus the mean of the clipped updates, and the noise.
    mean = {k: np.mean([clipped(d)[k] for d in deltas], axis=0) for k in initial}
    got = {k: v.numpy() for k, v in result.final.arrays.items()}
    noise_std = Z * C * np.sqrt(N / T) / N  # the sum's noise over the devices of a round
    for k in initial:
        err = got[k] - initial[k] - mean[k]
        assert float(np.sqrt(np.mean(err**2))) < 3 * noise_std + 1e-6, k
    flat = initial[WATCHED].ravel().astype(np.float64)
    for delta in deltas:
        vector = delta[WATCHED].ravel().astype(np.float64)
        assert best_match(view, vector, flat) < 0.1  # masked: uniform modulo 2^32
    for msg in view.received:  # nothing per device in the clear but the weight 1
        for record in msg.content.metric_records.values():
            assert set(record) <= {"num_examples"}, dict(record)
    privacy = result.final.client_level
    assert privacy is not None
    assert (privacy["mode"], privacy["min_survivors"], privacy["sample_rate"]) == (
        "distributed",
        T,
        1.0,
    )


def test_a_trusted_server_run_hands_over_every_update(tmp_path: Path, recomputed: Any) -> None:
    initial, deltas = recomputed
    result, view = run(experiment(tmp_path, "trusted"))
    assert result.final is not None
    flat = initial[WATCHED].ravel().astype(np.float64)
    for delta in deltas:
        assert best_match(view, delta[WATCHED].ravel().astype(np.float64), flat) > 0.99


def test_a_device_lost_mid_protocol_leaves_the_sum_of_the_others(
    tmp_path: Path, recomputed: Any
) -> None:
    initial, deltas = recomputed
    result, _ = run(experiment(tmp_path, "distributed"), client_app=dropout_app.app)
    assert result.final is not None
    (record,) = result.rounds
    assert (record.sampled, record.accepted) == (N, N - 1)
    # The survivors' sum over the N a round expects (as trusted DP-FedAvg divides).
    kept = [clipped(d) for p, d in enumerate(deltas) if p != dropout_app.DROPPED]
    noise_std = Z * C * np.sqrt((N - 1) / T) / N
    got = {k: v.numpy() for k, v in result.final.arrays.items()}
    for k in initial:
        err = got[k] - initial[k] - np.sum([d[k] for d in kept], axis=0) / N
        assert float(np.sqrt(np.mean(err**2))) < 3 * noise_std + 1e-6, k
