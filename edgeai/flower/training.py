"""Local training and evaluation of a task's model in plain PyTorch, with or without DP-SGD.

The task brings the loss and the metrics; the data is any torch-style dataset of
``(input, target)`` pairs (tensor datasets are sliced by index, as before tasks existed,
so the built-in ``mnist`` task trains to the same numbers).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeai.flower.plan import TrainingConfig
from edgeai.privacy.accounting import dp_session
from edgeai.privacy.config import PrivacyConfig
from edgeai.task import Task
from edgeai.task.batches import batch_of, chunks, size_of

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class TaskLoss(nn.Module):
    """A task's loss as a criterion module, for Opacus (ghost clipping asks per-sample losses).

    With ``reduction = "none"`` (set by Opacus while it computes per-sample norms) the
    task's batch-mean loss is taken sample by sample.
    """

    def __init__(self, loss: LossFn) -> None:
        super().__init__()
        self.loss = loss
        self.reduction = "mean"

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's loss; per sample when ``reduction`` is ``"none"``."""
        if self.reduction == "none":
            return torch.stack(
                [self.loss(output[i : i + 1], target[i : i + 1]) for i in range(len(output))]
            )
        value = self.loss(output, target)
        return value * len(output) if self.reduction == "sum" else value


@dataclass(frozen=True)
class TrainResult:
    """Outcome of one client's local training."""

    num_examples: int
    loss: float
    steps: int
    # DP only: the σ and q of this round's steps (for the ledger and the reply).
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0


class Proximal:
    """FedProx's proximal term μ/2·‖w - w_global‖², taken as a step after each SGD step.

    ``w ← w - η·μ·(w - w_global)`` is, to first order in η, the gradient step of the term
    (Li et al. 2020, eq. 2). Taken apart from the gradient it also holds under DP-SGD,
    where Opacus replaces ``p.grad`` by the clipped, noised per-sample sum (a loss term
    would be clipped away); the term depends on public weights only, so ε is unchanged.
    """

    def __init__(self, model: nn.Module, mu: float, lr: float) -> None:
        self.rate = mu * lr
        self.anchor = [p.detach().clone() for p in model.parameters()] if mu else []

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        """Pull the weights towards the round's global weights."""
        if not self.anchor:
            return
        for p, w0 in zip(model.parameters(), self.anchor, strict=True):
            p.sub_(self.rate * (p - w0))


def _optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=cfg.learning_rate,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


def train_plain(
    model: nn.Module,
    data: Dataset[Any],
    cfg: TrainingConfig,
    generator: torch.Generator,
    loss_fn: LossFn,
    *,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Minibatch SGD for ``cfg.local_epochs`` epochs over ``data`` with the task's loss.

    ``proximal_mu`` > 0: FedProx's proximal term towards the weights given (:class:`Proximal`).
    """
    n = size_of(data)
    opt = _optimizer(model, cfg)
    prox = Proximal(model, proximal_mu, cfg.learning_rate)
    model.train()
    total, steps = 0.0, 0
    for _ in range(cfg.local_epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, cfg.batch_size):
            xb, yb = batch_of(data, order[start : start + cfg.batch_size])
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            prox.step(model)
            total += float(loss.detach())
            steps += 1
    return TrainResult(n, total / max(steps, 1), steps)


def plan_dp(
    num_examples: int, cfg: TrainingConfig, privacy: PrivacyConfig, num_rounds: int
) -> tuple[float, float, int]:
    """The DP-SGD session a round will run: (σ, sample rate q = B/n, steps)."""
    return dp_session(num_examples, cfg.batch_size, cfg.local_epochs, privacy, num_rounds)


def train_dp(
    model: nn.Module,
    data: Dataset[Any],
    cfg: TrainingConfig,
    privacy: PrivacyConfig,
    *,
    num_rounds: int,
    generator: torch.Generator,
    loss_fn: LossFn,
    proximal_mu: float = 0.0,
) -> tuple[nn.Module, TrainResult]:
    """DP-SGD with Opacus: Poisson sampling at rate B/n, per-sample clipping, Gaussian noise.

    Runs exactly the session :func:`plan_dp` describes.  Returns the trained
    module (unwrapped from Opacus) and the result; ε is the caller's business.
    """
    from opacus import PrivacyEngine  # noqa: PLC0415  (train extra)

    n = size_of(data)
    sigma, sample_rate, steps = plan_dp(n, cfg, privacy, num_rounds)
    prox = Proximal(model, proximal_mu, cfg.learning_rate)
    # Opacus warns on every call that secure_mode is off (we seed the RNG for
    # reproducible experiments) and that backward hooks fire on the input layer.
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")
    loader = DataLoader(data, batch_size=cfg.batch_size, generator=generator)
    engine = PrivacyEngine(accountant=privacy.accountant, secure_mode=False)
    criterion: Any = TaskLoss(loss_fn)
    wrapped = engine.make_private(
        module=model,
        optimizer=_optimizer(model, cfg),
        data_loader=loader,
        noise_multiplier=sigma,
        max_grad_norm=privacy.max_grad_norm,
        poisson_sampling=True,
        grad_sample_mode=privacy.grad_sample_mode,
        criterion=criterion,
    )
    if privacy.grad_sample_mode == "ghost":
        dp_model, opt, criterion, dp_loader = wrapped
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
            loss = criterion(dp_model(xb), yb)
            loss.backward()
            opt.step()
            prox.step(model)
            if len(yb):
                total += float(loss.detach())
            done += 1
    unwrapped: nn.Module = dp_model._module
    return unwrapped, TrainResult(n, total / max(done, 1), done, sigma, sample_rate)


@torch.no_grad()
def evaluate(
    model: nn.Module, data: Dataset[Any], task: Task, batch_size: int = 1000
) -> tuple[dict[str, float], float]:
    """Return (the task's metrics, its mean loss) of ``model`` on ``data``.

    Each metric and the loss are averaged over batches weighted by their size; a set
    that fits one batch is measured in one go (exact, e.g. accuracy as a count / n).
    """
    model.eval()
    n = size_of(data)
    sums: dict[str, float] = {}
    loss_sum = 0.0
    pieces = chunks(n, batch_size)
    for piece in pieces:
        xb, yb = batch_of(data, piece)
        out = model(xb)
        loss = float(task.loss(out, yb))
        metrics = task.metrics(out, yb)
        if len(pieces) == 1:
            return {k: float(v) for k, v in metrics.items()}, loss
        loss_sum += loss * len(piece)
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + float(value) * len(piece)
    total = max(n, 1)
    return {k: v / total for k, v in sums.items()}, loss_sum / total


def seeded_generator(*parts: int) -> torch.Generator:
    """A torch generator seeded from several integers (run seed, round, client)."""
    seed = int(np.random.SeedSequence([abs(p) for p in parts]).generate_state(1)[0])
    return torch.Generator().manual_seed(seed)
