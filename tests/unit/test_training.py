import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from edgeai.data import load_dataset
from edgeai.errors import ConfigError
from edgeai.flower.client_app import PLAN_KEY, device_of, local_train, plan_config
from edgeai.flower.plan import ClientPlan, DataConfig, TrainingConfig
from edgeai.flower.training import evaluate, seeded_generator, train_dp, train_plain
from edgeai.models import build_model
from edgeai.privacy import PrivacyConfig, epsilon_for
from edgeai.privacy.ledger import BudgetExhaustedError, PrivacyLedger
from edgeai.task import TaskConfig
from edgeai.task.builtin.mnist import MnistTask

MNIST = MnistTask(model="dp-cnn")


def _data(x: np.ndarray, y: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    split = load_dataset("mnist")
    return split.train.x[:300], split.train.y[:300]


def _plan(privacy: PrivacyConfig, **training: float) -> ClientPlan:
    return ClientPlan(
        task=TaskConfig(name="mnist", options={"model": "dp-cnn"}),
        task_name="mnist",
        task_version="1",
        data=DataConfig(),
        training=TrainingConfig(**training),  # type: ignore[arg-type]
        privacy=privacy,
        num_rounds=3,
    )


def test_plan_survives_the_wire_exactly() -> None:
    plan = _plan(PrivacyConfig(enabled=True, target_epsilon=2.0), batch_size=16)
    wire = str(plan_config(plan)[PLAN_KEY])
    assert ClientPlan.model_validate_json(wire) == plan


def test_plain_training_learns(small: tuple[np.ndarray, np.ndarray]) -> None:
    data = _data(*small)
    model = build_model("fedavg-2nn", (1, 28, 28), 10, seed=0)
    before, _ = evaluate(model, data, MNIST)
    result = train_plain(
        model,
        data,
        TrainingConfig(local_epochs=3, batch_size=16, learning_rate=0.1),
        seeded_generator(0),
        MNIST.loss,
    )
    after, _ = evaluate(model, data, MNIST)
    assert result.steps == 3 * math.ceil(300 / 16)
    assert after["accuracy"] > before["accuracy"] + 0.4


def test_dp_training_reports_the_mechanism_and_meets_the_target(
    small: tuple[np.ndarray, np.ndarray],
) -> None:
    data = _data(*small)
    privacy = PrivacyConfig(enabled=True, target_epsilon=3.0, delta=1e-5)
    model = build_model("dp-cnn", (1, 28, 28), 10, seed=0)
    trained, result = train_dp(
        model,
        data,
        TrainingConfig(batch_size=30, learning_rate=1.0),
        privacy,
        num_rounds=4,
        generator=seeded_generator(1),
        loss_fn=MNIST.loss,
    )
    assert result.sample_rate == pytest.approx(30 / 300)
    assert result.steps == 10
    assert result.noise_multiplier > 0.5
    # four such rounds (the calibration horizon) stay within the target
    assert (
        epsilon_for([(result.noise_multiplier, result.sample_rate, 4 * result.steps)], 1e-5) <= 3.0
    )
    assert all(torch.isfinite(p).all() for p in trained.parameters())
    assert not hasattr(trained, "_module")  # unwrapped from Opacus


def test_tiny_dp_batches_with_empty_poisson_draws_do_not_crash(
    small: tuple[np.ndarray, np.ndarray],
) -> None:
    data = _data(small[0][:20], small[1][:20])  # q = 1/20: empty batches are likely
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.0)
    model = build_model("dp-cnn", (1, 28, 28), 10, seed=0)
    trained, result = train_dp(
        model,
        data,
        TrainingConfig(batch_size=1, local_epochs=3),
        privacy,
        num_rounds=1,
        generator=seeded_generator(2),
        loss_fn=MNIST.loss,
    )
    assert result.steps == 60
    assert all(torch.isfinite(p).all() for p in trained.parameters())


@pytest.fixture
def device_npz(tmp_path: Path, small: tuple[np.ndarray, np.ndarray]) -> Path:
    """A device's own data file: 300 uint8 images."""
    path = tmp_path / "local.npz"
    np.savez(path, X=(small[0][:, 0] * 255).astype(np.uint8), y=small[1])
    return path


def test_a_device_trains_on_its_own_npz_within_its_ledger(tmp_path: Path, device_npz: Path) -> None:
    path = device_npz
    plan = _plan(PrivacyConfig(enabled=True, target_epsilon=3.0), batch_size=30)
    node = {"data-path": str(path), "node-name": "pi-7", "ledger-path": str(tmp_path / "l.db")}
    device = device_of(plan, node, node_id=5, run_id=1)
    assert device.subject == "pi-7"
    model = build_model("dp-cnn", (1, 28, 28), 10, seed=0)
    state, metrics = local_train(plan, model.state_dict(), node, 1, device)
    assert metrics["num-examples"] == 300
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        assert metrics["epsilon"] == pytest.approx(ledger.spent("pi-7", 1e-5))
        assert len(ledger.history("pi-7")) == 1
    state2, metrics2 = local_train(plan, state, node, 2, device)
    assert metrics2["epsilon"] > metrics["epsilon"]
    assert metrics2["dp-steps"] == 2 * metrics["dp-steps"]
    assert set(state2) == set(state)


def test_a_device_refuses_past_its_budget_and_spends_nothing(
    tmp_path: Path, device_npz: Path
) -> None:
    path = device_npz
    privacy = PrivacyConfig(enabled=True, noise_multiplier=1.5, budget_epsilon=2.5)
    plan = _plan(privacy, batch_size=30)
    node = {"data-path": str(path), "node-name": "pi-8", "ledger-path": str(tmp_path / "l.db")}
    device = device_of(plan, node, node_id=5, run_id=1)
    state = build_model("dp-cnn", (1, 28, 28), 10, seed=0).state_dict()
    # independently: how many 10-step sessions at σ = 1.5, q = 0.1 fit into ε = 2.5?
    fits = max(k for k in range(1, 50) if epsilon_for([(1.5, 0.1, 10 * k)], 1e-5) <= 2.5)
    for rnd in range(1, fits + 1):
        state, _ = local_train(plan, state, node, rnd, device)
    with PrivacyLedger(tmp_path / "l.db") as ledger:
        before = ledger.spent("pi-8", 1e-5)
    with pytest.raises(BudgetExhaustedError, match="pi-8"):
        local_train(plan, state, node, fits + 1, device)
    with PrivacyLedger(tmp_path / "l.db") as ledger:  # a restart reads the same spend
        assert ledger.spent("pi-8", 1e-5) == before
        assert len(ledger.history("pi-8")) == fits


def test_dp_without_a_ledger_is_a_config_error(small: tuple[np.ndarray, np.ndarray]) -> None:
    plan = _plan(PrivacyConfig(enabled=True, target_epsilon=3.0), batch_size=30)
    node = {"partition-id": 0, "num-partitions": 10}
    state = build_model("dp-cnn", (1, 28, 28), 10, seed=0).state_dict()
    with pytest.raises(ConfigError, match="ledger-path"):
        local_train(plan, state, node, 1, device_of(plan, node, 0, 0))


def test_cosine_schedule_decays_from_the_rate_to_zero() -> None:
    cfg = TrainingConfig(learning_rate=2.0, lr_schedule="cosine")
    rates = [cfg.learning_rate_at(r, 5) for r in range(1, 6)]
    assert rates[0] == pytest.approx(2.0)
    assert rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert rates == sorted(rates, reverse=True)
    assert TrainingConfig(learning_rate=2.0).learning_rate_at(4, 5) == 2.0
