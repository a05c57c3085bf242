"""A DP-SGD step vs a plain SGD step on the DP CNN, measured side by side.

    python -m bench.bench_dp_step [--batch 64 128 256] [--steps 60]

Each step: forward, backward, optimizer step on one batch of real MNIST images.
DP steps go through Opacus (per-sample gradients, clipping, noise) with each
of its gradient engines; the ratio is DP time / plain time in the same run.
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
    batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, batch * steps, batch)]
    samples = []
    for i, (xb, yb) in enumerate(batches):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()
        if i >= 5:  # warm-up
            samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["dp-cnn", "dp-cnn-tiny"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load_dataset("mnist").train
    x, y = torch.from_numpy(train.x), torch.from_numpy(train.y)
    print(f"{args.threads} torch thread(s), median of {args.steps - 5} steps, best of 2 runs")
    print(f"{'model':>12} {'batch':>6} {'plain ms':>9} {'mode':>10} {'DP ms':>8} {'ratio':>6}")
    for name in args.models:
        for batch in args.batch:
            plain = min(
                time_steps(name, "plain", batch, steps=args.steps, x=x, y=y) for _ in range(2)
            )
            for mode in ("hooks", "ghost", "functorch"):
                dp = min(
                    time_steps(name, mode, batch, steps=args.steps, x=x, y=y) for _ in range(2)
                )
                print(
                    f"{name:>12} {batch:>6} {plain * 1e3:>9.2f} {mode:>10} {dp * 1e3:>8.2f} "
                    f"{dp / plain:>5.2f}x"
                )


if __name__ == "__main__":
    main()
