"""A DP-SGD step vs a plain SGD step on the DP CNN, measured side by side.

    python -m bench.bench_dp_step [--batch 64 128 256] [--steps 60] [--rounds 3]

Each step: forward, backward, optimizer step on one full batch of real MNIST images.
DP steps go through Opacus (per-sample gradients, clipping, noise) with each
of its gradient engines; the ratio is DP time / plain time in the same run.

Every timed step sees exactly ``batch`` samples: the batches walk a fixed permutation
of the training set and wrap around at its end.  (Slicing ``batch * steps`` rows out of
the 8000 training images used to run past the end at batch 256: the plain steps timed
empty batches, 0.5 ms, and Opacus' conv grad sampler failed on them with "expected
groups to be greater than 0".)
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from edgeai.data import load_dataset
from edgeai.models import build_model

warnings.filterwarnings("ignore")


WARMUP_STEPS = 5


def full_batches(
    x: torch.Tensor, y: torch.Tensor, batch: int, steps: int, *, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``steps`` batches of exactly ``batch`` samples, cycling through ``x`` in a fixed order.

    Raises
    ------
    SystemExit
        If the data set is smaller than one batch.
    """
    n = len(x)
    if batch > n:
        raise SystemExit(f"--batch {batch} is larger than the training set ({n} samples)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    batches = []
    for step in range(steps):
        index = order[(torch.arange(batch) + step * batch) % n]
        batches.append((x[index], y[index]))
    return batches


def time_steps(
    model_name: str, mode: str, batch: int, *, steps: int, x: torch.Tensor, y: torch.Tensor
) -> float:
    model = build_model(model_name, (1, 28, 28), 10, seed=0)
    opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn: nn.Module = nn.CrossEntropyLoss()
    if mode != "plain":
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        wrapped = PrivacyEngine().make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            grad_sample_mode=mode,
            criterion=loss_fn,
        )
        if mode == "ghost":
            model, opt, loss_fn, _ = wrapped
        else:
            model, opt, _ = wrapped
    samples = []
    for i, (xb, yb) in enumerate(full_batches(x, y, batch, steps)):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()
        if i >= WARMUP_STEPS:
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


MODES = ("plain", "hooks", "ghost", "functorch")


def spread_pct(values: list[float]) -> float:
    """The range of ``values`` in % of their median: how far one round can be trusted."""
    return (max(values) - min(values)) / statistics.median(values) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["dp-cnn", "dp-cnn-tiny"])
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be more than the {WARMUP_STEPS} warm-up steps")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist").train
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    print(
        f"{args.threads} torch thread(s), {len(x)} training images, full batches; per round "
        f"the median of {args.steps - WARMUP_STEPS} steps, modes interleaved "
        f"({', '.join(MODES)}); median of {args.rounds} rounds, noise = range/median"
    )
    print(
        f"{'model':>12} {'batch':>6} {'plain ms':>9} {'noise':>6} {'us/sample':>10} "
        f"{'mode':>10} {'DP ms':>8} {'noise':>6} {'ratio':>6}"
    )
    for name in args.models:
        for batch in args.batch:
            # Interleaved (plain, hooks, ghost, functorch, plain, ...) so that a busy
            # neighbour or a clock change hits every mode alike.
            rounds: dict[str, list[float]] = {mode: [] for mode in MODES}
            for _ in range(args.rounds):
                for mode in MODES:
                    rounds[mode].append(time_steps(name, mode, batch, steps=args.steps, x=x, y=y))
            plain = statistics.median(rounds["plain"])
            for mode in MODES[1:]:
                dp = statistics.median(rounds[mode])
                print(
                    f"{name:>12} {batch:>6} {plain * 1e3:>9.2f} "
                    f"{spread_pct(rounds['plain']):>5.0f}% {plain / batch * 1e6:>10.1f} "
                    f"{mode:>10} {dp * 1e3:>8.2f} {spread_pct(rounds[mode]):>5.0f}% "
                    f"{dp / plain:>5.2f}x"
                )


if __name__ == "__main__":
    main()
