"""[attack]: who attacks (fixed by seed and fraction) and what each attack sends; FedProx's term."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.functional import cross_entropy
from torch.utils.data import TensorDataset

from edgeai.configfile import parse
from edgeai.errors import ConfigError
from edgeai.flower.attacks import AttackConfig, AttackPlan, attackers, flip_labels
from edgeai.flower.plan import TrainingConfig
from edgeai.flower.training import seeded_generator, train_dp, train_plain
from edgeai.privacy.config import PrivacyConfig

G = {"w": np.full((2, 3), 1.0, np.float32), "steps": np.array(7, np.int64)}
L = {"w": np.full((2, 3), 1.5, np.float32), "steps": np.array(8, np.int64)}


def _plan(kind: str, **extra: float) -> AttackPlan:
    cfg = AttackConfig(kind=kind, fraction=0.5, **extra)  # type: ignore[arg-type]
    return AttackPlan.of(cfg, 4, seed=3)


@given(n=st.integers(1, 200), fraction=st.floats(0, 0.99), seed=st.integers(0, 2**40))
def test_the_attackers_are_a_fixed_share_chosen_by_seed(n: int, fraction: float, seed: int) -> None:
    chosen = attackers(n, fraction, seed)
    assert len(chosen) == round(fraction * n)
    assert chosen <= set(range(n))
    assert chosen == attackers(n, fraction, seed)  # the same every time it is asked


def test_other_seeds_choose_other_attackers() -> None:
    assert len({attackers(50, 0.2, s) for s in range(10)}) > 1


def test_each_update_attack_sends_what_it_says() -> None:
    plan = _plan("sign-flip")
    bad = next(iter(plan.attacker_ids))
    honest = next(i for i in range(4) if i not in plan.attacker_ids)
    assert plan.poison_update(honest, 1, G, L) is L
    np.testing.assert_allclose(plan.poison_update(bad, 1, G, L)["w"], 1.0 - 4 * 0.5)
    np.testing.assert_allclose(_plan("sign-flip", factor=1).poison_update(bad, 1, G, L)["w"], 0.5)
    np.testing.assert_allclose(_plan("scale").poison_update(bad, 1, G, L)["w"], 1.0 + 10 * 0.5)
    assert np.isnan(_plan("nan").poison_update(bad, 1, G, L)["w"]).all()
    noisy = _plan("noise", noise_std=2.0).poison_update(
        bad, 1, {"w": np.zeros((300, 300))}, {"w": np.ones((300, 300))}
    )
    assert abs(float(noisy["w"].std()) - 2.0) < 0.05
    assert abs(float(noisy["w"].mean())) < 0.05
    for kind in ("sign-flip", "scale", "nan", "noise"):
        sent = _plan(kind).poison_update(bad, 1, G, L)
        assert sent["w"].dtype == np.float32
        assert sent["steps"] == 8  # integer counters are never touched
    # label-flip changes the data, not the reply
    assert _plan("label-flip").poison_update(bad, 1, G, L) is L


def test_label_flip_mirrors_the_classes_of_attackers_only() -> None:
    y = np.array([0, 1, 9, 4])
    assert flip_labels(y, 10).tolist() == [9, 8, 0, 5]
    plan = _plan("label-flip")
    bad = next(iter(plan.attacker_ids))
    honest = next(i for i in range(4) if i not in plan.attacker_ids)
    assert plan.poison_labels(bad, y, 10).tolist() == [9, 8, 0, 5]
    assert plan.poison_labels(honest, y, 10) is y
    assert _plan("scale").poison_labels(bad, y, 10) is y


def test_no_attack_config_means_nobody_attacks() -> None:
    plan = AttackPlan.of(None, 10, 0)
    assert not any(plan.attacks(i) for i in range(10))
    assert plan.poison_update(0, 1, G, L) is L


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_a_fraction_outside_0_1_is_refused_with_the_fix(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"attack.fraction = .*must be in \[0, 1\)"):
        parse(AttackConfig, {"kind": "scale", "fraction": fraction}, "exp.toml")


def test_options_of_another_kind_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"attack\.factor applies to"):
        parse(AttackConfig, {"kind": "noise", "factor": 3}, "exp.toml")
    with pytest.raises(ConfigError, match="noise_std applies to kind = 'noise'"):
        parse(AttackConfig, {"kind": "scale", "noise_std": 1}, "exp.toml")
    with pytest.raises(ConfigError, match=r"kind"):
        parse(AttackConfig, {"kind": "backdoor"}, "exp.toml")


def _train(mu: float) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    start = nn.Linear(4, 3)
    model = nn.Linear(4, 3)
    model.load_state_dict(start.state_dict())
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))
    cfg = TrainingConfig(local_epochs=5, batch_size=8, learning_rate=0.2)
    train_plain(model, data, cfg, seeded_generator(0, 1, 2), cross_entropy, proximal_mu=mu)
    return start, model


def _drift(start: nn.Module, model: nn.Module) -> float:
    return float(
        sum(
            ((a - b) ** 2).sum().detach()
            for a, b in zip(start.parameters(), model.parameters(), strict=True)
        )
    )


def test_fedprox_pulls_local_training_towards_the_global_model() -> None:
    drifts = [_drift(*_train(mu)) for mu in (0.0, 0.1, 2.0)]
    assert drifts[0] > drifts[1] > drifts[2]
    assert drifts[2] < 0.5 * drifts[0]


def test_fedprox_holds_under_dp_sgd_where_opacus_replaces_the_gradient() -> None:
    privacy = PrivacyConfig(enabled=True, noise_multiplier=0.5, max_grad_norm=1.0)
    cfg = TrainingConfig(local_epochs=5, batch_size=8, learning_rate=0.5)
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))
    drifts = []
    for mu in (0.0, 1.0):
        torch.manual_seed(0)
        start = nn.Linear(4, 3)
        model = nn.Linear(4, 3)
        model.load_state_dict(start.state_dict())
        trained, _ = train_dp(
            model,
            data,
            cfg,
            privacy,
            num_rounds=1,
            generator=seeded_generator(0, 1, 2),
            loss_fn=cross_entropy,
            proximal_mu=mu,
        )
        drifts.append(_drift(start, trained))
    assert drifts[1] < 0.5 * drifts[0]
