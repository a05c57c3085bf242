"""Same seed, same config: the vmap and ray backends give the same run.

Each client draws the same batches and (with DP-SGD) the same noise on both backends, so
a tanh model's runs agree to float rounding and ε agrees exactly; a ReLU model's may part
a little (a unit at 0 within rounding can switch), so its accuracies agree within noise.
"""

from __future__ import annotations

import pytest

from edgeai.flower.experiment import Experiment
from edgeai.simulation.runner import run_experiment

pytestmark = pytest.mark.integration


def both(raw: dict[str, object]) -> tuple[list[float], list[float], list[float | None]]:
    accs, eps = {}, {}
    for backend in ("vmap", "ray"):
        exp = Experiment.model_validate({**raw, "simulation": {"backend": backend, "num_cpus": 2}})
        result = run_experiment(exp)
        accs[backend] = [float(r.accuracy or 0.0) for r in result.rounds]
        eps[backend] = [r.epsilon for r in result.rounds]
    if None in eps["ray"]:  # no DP-SGD: no ε on either side
        assert eps["vmap"] == eps["ray"]
    else:
        assert eps["vmap"] == pytest.approx(eps["ray"], rel=1e-9)
    return accs["vmap"], accs["ray"], eps["vmap"]


def test_dp_sgd_runs_agree_to_rounding() -> None:
    vmap, ray, eps = both(
        {
            "name": "agree-dp",
            "seed": 4,
            "model": {"name": "dp-cnn-tiny"},
            "data": {"partition": {"kind": "dirichlet", "alpha": 0.5}},
            "federation": {"num_clients": 6, "clients_per_round": 3, "rounds": 3},
            "training": {"batch_size": 64, "learning_rate": 1.0, "momentum": 0.5},
            "privacy": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 0.5},
        }
    )
    assert all(e is not None and e > 0 for e in eps)
    assert vmap == pytest.approx(ray, abs=2e-3)  # a few of 2,000 validation images


def test_fedavg_cnn_runs_agree_within_noise() -> None:
    vmap, ray, eps = both(
        {
            "name": "agree-cnn",
            "seed": 1,
            "model": {"name": "fedavg-cnn"},
            "federation": {"num_clients": 20, "clients_per_round": 4, "rounds": 3},
            "training": {"batch_size": 10, "learning_rate": 0.05},
        }
    )
    assert eps == [None, None, None]
    assert vmap[-1] > 0.8
    assert vmap == pytest.approx(ray, abs=0.02)
