"""DP-SGD honours the momentum of the training config (the ScatterNet quickstart uses 0.9)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812
from torch.utils.data import TensorDataset

from edgeai.flower.plan import TrainingConfig
from edgeai.flower.training import train_dp
from edgeai.privacy.config import PrivacyConfig


def _displacement(momentum: float) -> float:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    start = model.weight.detach().clone()
    # Identical samples: every step's clipped gradient points the same way (σ = 0), so
    # momentum can only lengthen the path; without it two steps cover exactly 2 lr·g.
    data = TensorDataset(torch.ones(64, 4), torch.zeros(64, dtype=torch.long))
    cfg = TrainingConfig(batch_size=32, learning_rate=0.1, momentum=momentum)
    privacy = PrivacyConfig(enabled=True, noise_multiplier=0.0, max_grad_norm=0.1)
    trained, result = train_dp(
        model,
        data,
        cfg,
        privacy,
        num_rounds=1,
        generator=torch.Generator().manual_seed(3),
        loss_fn=F.cross_entropy,
    )
    assert result.steps == 2
    return float((trained.weight.detach() - start).norm())


def test_momentum_carries_the_first_step_into_the_second() -> None:
    plain, heavy = _displacement(0.0), _displacement(0.9)
    assert heavy > 1.3 * plain
