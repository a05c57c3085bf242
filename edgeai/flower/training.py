"""Local training and evaluation in plain PyTorch, with or without DP-SGD."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeai.data.datasets import ArrayDataset
from edgeai.flower.plan import TrainingConfig
from edgeai.privacy.accounting import dp_session
from edgeai.privacy.config import PrivacyConfig


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one client's local training."""

    num_examples: int
    loss: float
    steps: int
    # DP only: the σ and q of this round's steps (for the ledger and the reply).
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0


def _optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


def train_plain(
    model: nn.Module, data: ArrayDataset, cfg: TrainingConfig, generator: torch.Generator
) -> TrainResult:
    """Minibatch SGD for ``cfg.local_epochs`` epochs over ``data``."""
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    opt = _optimizer(model, cfg)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total, steps = 0.0, 0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
    return TrainResult(len(y), total / max(steps, 1), steps)


def plan_dp(
    num_examples: int, cfg: TrainingConfig, privacy: PrivacyConfig, num_rounds: int
) -> tuple[float, float, int]:
    """The DP-SGD session a round will run: (σ, sample rate q = B/n, steps)."""
    return dp_session(num_examples, cfg.batch_size, cfg.local_epochs, privacy, num_rounds)


def train_dp(
    model: nn.Module,
    data: ArrayDataset,
    cfg: TrainingConfig,
    privacy: PrivacyConfig,
    *,
    num_rounds: int,
    generator: torch.Generator,
) -> tuple[nn.Module, TrainResult]:
    """DP-SGD with Opacus: Poisson sampling at rate B/n, per-sample clipping, Gaussian noise.

    Runs exactly the session :func:`plan_dp` describes.  Returns the trained
    module (unwrapped from Opacus) and the result; ε is the caller's business.
    """
    from opacus import PrivacyEngine  # noqa: PLC0415  (train extra)

    n = len(data)
    sigma, sample_rate, steps = plan_dp(n, cfg, privacy, num_rounds)
    # Opacus warns on every call that secure_mode is off (we seed the RNG for
    # reproducible experiments) and that backward hooks fire on the input layer.
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    loader = DataLoader(
        TensorDataset(torch.from_numpy(data.x), torch.from_numpy(data.y)),
        batch_size=cfg.batch_size,
        generator=generator,
    )
    engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=False)
    loss_fn: nn.Module = nn.CrossEntropyLoss()
    wrapped = engine.make_private(
        module=model,
        optimizer=_optimizer(model, cfg),
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=privacy.grad_sample_mode,
        criterion=loss_fn,
    )
    if privacy.grad_sample_mode == "ghost":
        dp_model, opt, loss_fn, dp_loader = wrapped
    else:
        dp_model, opt, dp_loader = wrapped
    dp_model.train()
    total, done = 0.0, 0
    while done < steps:
        for xb, yb in dp_loader:
            if done >= steps:
                break
            opt.zero_grad(set_to_none=True)
            # An empty Poisson batch is still a step of the mechanism: Opacus takes the
            # zero-length per-sample gradients, adds the noise and accounts for the step.
            loss = loss_fn(dp_model(xb), yb)
            loss.backward()
            opt.step()
            if len(yb):
                total += float(loss.detach())
            done += 1
    unwrapped: nn.Module = dp_model._module
    return unwrapped, TrainResult(n, total / max(done, 1), done, sigma, sample_rate)


@torch.no_grad()
def evaluate(model: nn.Module, data: ArrayDataset, batch_size: int = 1000) -> tuple[float, float]:
    """Return (accuracy, mean cross-entropy loss) of ``model`` on ``data``."""
    model.eval()
    correct, loss_sum = 0, 0.0
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    for start in range(0, len(data), batch_size):
        xb = torch.from_numpy(data.x[start : start + batch_size])
        yb = torch.from_numpy(data.y[start : start + batch_size])
        logits = model(xb)
        loss_sum += float(loss_fn(logits, yb))
        correct += int((logits.argmax(1) == yb).sum())
    n = max(len(data), 1)
    return correct / n, loss_sum / n


def seeded_generator(*parts: int) -> torch.Generator:
    """A torch generator seeded from several integers (run seed, round, client)."""
    seed = int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)
