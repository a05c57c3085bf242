"""Many clients' local training at once: ``torch.func`` over stacked parameters (pure math).

Each client's parameters are one slice of a stacked tensor (clients on dim 0); one
``vmap``-ed ``grad`` computes every client's step together, and a masked SGD update
applies it. Clients are padded to the same number of steps and samples per step; a
padded sample weighs 0 and a padded step changes nothing, so each client follows exactly
the trajectory the ClientApp would (``edgeai.flower.training``):

- plain SGD: the same ``randperm`` order from the client's generator, mean loss per batch;
- DP-SGD: Opacus' Poisson sampling (rate ``1/ceil(n/B)``, drawn from the client's
  generator as ``DPDataLoader`` draws it), per-sample gradients (``vmap(grad)``), clipping
  to ``C`` (Opacus' factor ``min(1, C/(‖g‖+1e-6))``), noise ``N(0, (σC)²)`` drawn in
  Opacus' order from the seed the ClientApp gives torch's global RNG, divided by Opacus'
  expected batch size ``int(n·q)``.

Same inputs, same draws: the results match the ClientApp's to float rounding.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from edgeai.errors import ConfigError
from edgeai.flower.plan import TrainingConfig

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Stacked = dict[str, torch.Tensor]  # parameter name -> (clients, *shape)


@dataclass(frozen=True)
class ClientJob:
    """One client's share of a round: its samples and its random streams."""

    indices: torch.Tensor  # int64 indices of its samples in the task's training set
    generator: torch.Generator  # its seeded generator, after the ClientApp's seed draw
    noise_seed: int  # the seed the ClientApp gives torch's global RNG (DP noise)


@dataclass(frozen=True)
class DPSetting:
    """A client's DP-SGD session: σ, steps and clipping (as ``plan_dp`` gives them)."""

    sigma: float
    steps: int
    max_grad_norm: float


@dataclass(frozen=True)
class Schedule:
    """Which samples each client uses at each step: (clients, steps, slots)."""

    index: torch.Tensor  # int64 into the training set (padding: any valid index)
    weight: torch.Tensor  # 1.0 for a real sample, 0.0 for padding
    active: torch.Tensor  # (clients, steps) bool: the step is one of the client's


def parameter_names(model: nn.Module) -> list[str]:
    """The trainable state of ``model``; refuse models with state that training changes.

    Raises
    ------
    ConfigError
        The model has persistent buffers (e.g. batch norm's running statistics).
    """
    persistent = set(model.state_dict()) - {n for n, _ in model.named_parameters()}
    if persistent:
        raise ConfigError(
            f"simulation.backend = 'vmap' trains parameters only; the model has buffers "
            f"{sorted(persistent)[:3]} (e.g. batch norm); use backend = 'ray'"
        )
    return [n for n, _ in model.named_parameters()]


def split_fixed_prefix(model: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """A ``Sequential``'s leading layers that train nothing, and the rest (names kept).

    A layer belongs to the fixed prefix if it has no parameters, no persistent buffers
    and no randomness (dropout): input normalization, a fixed feature extractor such
    as ScatterNet's scattering, GroupNorm without affine parameters, flattening.
    """
    if not isinstance(model, nn.Sequential):
        return None, model
    children = list(model.named_children())
    k = 0
    for _, child in children:
        fixed = (
            not any(True for _ in child.parameters())
            and not child.state_dict()
            and not any(isinstance(m, nn.modules.dropout._DropoutNd) for m in child.modules())
        )
        if not fixed:
            break
        k += 1
    if k == 0:
        return None, model
    return nn.Sequential(OrderedDict(children[:k])), nn.Sequential(OrderedDict(children[k:]))


@torch.no_grad()
def _through(prefix: nn.Module, inputs: torch.Tensor, chunk: int = 1000) -> torch.Tensor:
    prefix.train()  # as the ClientApp runs it (the fixed layers behave the same either way)
    return torch.cat([prefix(inputs[i : i + chunk]) for i in range(0, len(inputs), chunk)])


def plain_schedule(jobs: Sequence[ClientJob], cfg: TrainingConfig) -> Schedule:
    """Each client's minibatches for ``cfg.local_epochs`` epochs, as ``train_plain`` draws them."""
    per_client: list[list[torch.Tensor]] = []
    for job in jobs:
        n = len(job.indices)
        batches = []
        for _ in range(cfg.local_epochs):
            order = torch.randperm(n, generator=job.generator)
            batches += [
                job.indices[order[s : s + cfg.batch_size]] for s in range(0, n, cfg.batch_size)
            ]
        per_client.append(batches)
    return _pad(per_client, cfg.batch_size, [len(b) for b in per_client])


def opacus_rate(n: int, batch_size: int) -> tuple[float, int]:
    """Opacus' Poisson rate ``1/len(loader)`` and expected batch size ``int(n·rate)``."""
    rate = 1 / math.ceil(n / batch_size)
    return rate, int(n * rate)


def poisson_schedule(
    jobs: Sequence[ClientJob], cfg: TrainingConfig, steps: Sequence[int]
) -> Schedule:
    """Each client's Poisson batches, drawn from its generator as Opacus' ``DPDataLoader`` does.

    Every pass over the loader first draws DataLoader's base seed, then one mask of
    ``rand(n) < rate`` per batch, ``int(1/rate)`` batches a pass.
    """
    per_client: list[list[torch.Tensor]] = []
    for job, total in zip(jobs, steps, strict=True):
        n = len(job.indices)
        rate, _ = opacus_rate(n, cfg.batch_size)
        per_pass = int(1 / rate)
        batches: list[torch.Tensor] = []
        while len(batches) < total:
            torch.empty((), dtype=torch.int64).random_(generator=job.generator)
            for _ in range(min(per_pass, total - len(batches))):
                mask = torch.rand(n, generator=job.generator) < rate
                batches.append(job.indices[mask.nonzero(as_tuple=False).reshape(-1)])
        per_client.append(batches)
    width = max((len(b) for bs in per_client for b in bs), default=0)
    return _pad(per_client, max(width, 1), list(steps))


def _pad(per_client: list[list[torch.Tensor]], width: int, steps: list[int]) -> Schedule:
    k, s = len(per_client), max(steps, default=0)
    index = torch.zeros((k, s, width), dtype=torch.long)
    weight = torch.zeros((k, s, width))
    active = torch.zeros((k, s), dtype=torch.bool)
    for i, batches in enumerate(per_client):
        active[i, : steps[i]] = True
        for j, batch in enumerate(batches):
            index[i, j, : len(batch)] = batch
            weight[i, j, : len(batch)] = 1.0
    return Schedule(index, weight, active)


class BatchedTrainer:
    """Trains stacked copies of one model architecture, client-parallel."""

    def __init__(
        self, model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor
    ) -> None:
        self.names = parameter_names(model)
        prefix, self.model = split_fixed_prefix(model)
        self.buffers = dict(self.model.named_buffers())
        self.loss_fn = loss_fn
        # The whole training set (gathered by the schedules' indices), through the model's
        # fixed first layers once: they train nothing and treat each sample on its own.
        self.inputs = _through(prefix, inputs) if prefix is not None else inputs
        self.targets = targets

    def _forward(self, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, ({**params, **self.buffers},), (x,))  # type: ignore[no-any-return]

    def _sample_losses(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # The task's loss is a batch mean: on a batch of one it is that sample's loss.
        return vmap(lambda o, t: self.loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, y)

    def _batch_loss(
        self, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        per = self._sample_losses(self._forward(params, x), y)
        loss = (per * w).sum() / w.sum().clamp(min=1.0)
        return loss, loss.detach()

    def _sample_loss(
        self, params: Mapping[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.loss_fn(self._forward(params, x.unsqueeze(0)), y.unsqueeze(0))
        return loss, loss.detach()

    def _targets(self, idx: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        # labels: each client's own copy of the training targets (a label-flipper's differ).
        if labels is None:
            return self.targets[idx]
        return labels.gather(1, idx.reshape(len(idx), -1)).reshape(idx.shape)

    def train_plain(
        self,
        params: Stacked,
        sched: Schedule,
        cfg: TrainingConfig,
        *,
        mu: float = 0.0,
        labels: torch.Tensor | None = None,
    ) -> tuple[Stacked, list[float]]:
        """Minibatch SGD of every client; returns the parameters and each client's mean loss.

        ``mu``: FedProx's proximal step; ``labels``: (clients, training set) targets.
        """
        step_grad = vmap(grad(self._batch_loss, has_aux=True))
        sgd = _SGD(params, cfg, mu)
        loss_sum = torch.zeros(len(sched.active))
        for s in range(sched.active.shape[1]):
            idx = sched.index[:, s]
            y = self._targets(idx, labels)
            grads, loss = step_grad(params, self.inputs[idx], y, sched.weight[:, s])
            active = sched.active[:, s]
            params = sgd.step(params, grads, active)
            loss_sum += torch.where(active, loss, 0.0)
        counts = sched.active.sum(dim=1).clamp(min=1)
        return params, (loss_sum / counts).tolist()

    def train_dp(
        self,
        params: Stacked,
        sched: Schedule,
        cfg: TrainingConfig,
        jobs: Sequence[ClientJob],
        dp: Sequence[DPSetting],
        *,
        mu: float = 0.0,
        labels: torch.Tensor | None = None,
    ) -> tuple[Stacked, list[float]]:
        """DP-SGD of every client; returns the parameters and each client's mean loss."""
        per_sample = vmap(vmap(grad(self._sample_loss, has_aux=True), in_dims=(None, 0, 0)))
        sgd = _SGD(params, cfg, mu)
        noise_gens = [torch.Generator().manual_seed(j.noise_seed) for j in jobs]
        clip = torch.tensor([d.max_grad_norm for d in dp])
        scale = torch.tensor([float(opacus_rate(len(j.indices), cfg.batch_size)[1]) for j in jobs])
        loss_sum = torch.zeros(len(jobs))
        for s in range(sched.active.shape[1]):
            idx, w, active = sched.index[:, s], sched.weight[:, s], sched.active[:, s]
            grads, losses = per_sample(params, self.inputs[idx], self._targets(idx, labels))
            summed = clipped_sum(grads, w, clip)
            for name in self.names:  # Opacus adds noise parameter by parameter, in order
                noise = torch.stack(
                    [
                        _noise(d.sigma * d.max_grad_norm, summed[name].shape[1:], g)
                        if a
                        else torch.zeros(summed[name].shape[1:])
                        for d, g, a in zip(dp, noise_gens, active.tolist(), strict=True)
                    ]
                )
                summed[name] = (summed[name] + noise) / scale.view(-1, *[1] * (noise.dim() - 1))
            params = sgd.step(params, summed, active)
            real = w.sum(dim=1)
            mean = (losses * w).sum(dim=1) / real.clamp(min=1.0)
            loss_sum += torch.where(active & (real > 0), mean, 0.0)
        counts = sched.active.sum(dim=1).clamp(min=1)
        return params, (loss_sum / counts).tolist()


def clipped_sum(grads: Stacked, weight: torch.Tensor, clip: torch.Tensor) -> Stacked:
    """Per client: Σ over its real samples of each gradient clipped to that client's norm.

    ``grads`` are per-sample (clients, samples, *shape); Opacus' clipping: the norm over
    all parameters, factor ``min(1, C / (‖g‖ + 1e-6))``.
    """
    norms = torch.stack([g.flatten(2).norm(2, dim=-1) for g in grads.values()], dim=-1).norm(
        2, dim=-1
    )
    factor = (clip.view(-1, 1) / (norms + 1e-6)).clamp(max=1.0) * weight
    return {name: torch.einsum("ks,ks...->k...", factor, g) for name, g in grads.items()}


def _noise(std: float, shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    if std == 0:
        return torch.zeros(shape)  # as Opacus: no draw at all
    return torch.normal(mean=0.0, std=std, size=shape, generator=gen)


class _SGD:
    """torch.optim.SGD (momentum, weight decay, no dampening) on stacked parameters, masked."""

    def __init__(self, params: Stacked, cfg: TrainingConfig, mu: float = 0.0) -> None:
        self.cfg = cfg
        # torch starts the buffer at the first gradient: momentum·0 + g is that, exactly.
        self.buf = {n: torch.zeros_like(p) for n, p in params.items()} if cfg.momentum else {}
        # FedProx: after each step, w -= μ·η·(w - w_global) (edgeai.flower.training.Proximal).
        self.rate = mu * cfg.learning_rate
        self.anchor = {n: p.clone() for n, p in params.items()} if mu else {}

    def step(self, params: Stacked, grads: Stacked, active: torch.Tensor) -> Stacked:
        out = {}
        for name, p in params.items():
            g = grads[name]
            mask = active.view(-1, *[1] * (p.dim() - 1))
            if self.cfg.weight_decay:
                g = g.add(p, alpha=self.cfg.weight_decay)
            if self.cfg.momentum:
                buf = self.buf[name].mul(self.cfg.momentum).add(g)
                self.buf[name] = torch.where(mask, buf, self.buf[name])
                g = buf
            stepped = p.add(g, alpha=-self.cfg.learning_rate)
            if self.anchor:
                stepped = stepped.sub(self.rate * (stepped - self.anchor[name]))
            out[name] = torch.where(mask, stepped, p)
        return out
