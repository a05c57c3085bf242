"""A small registry of models by name.

Every model takes float32 pixels in [0, 1], shape (N, C, H, W), and returns
logits (N, classes).  Input normalization is the first layer, so an exported
ONNX graph carries it and a device never needs to know how the model was trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from edgeai.errors import ConfigError, UnknownNameError
from edgeai.models.scatternet import Scattering2d

# MNIST pixel statistics; close enough for the other grey-scale digit sets.
_MEAN, _STD = 0.1307, 0.3081


class Normalize(nn.Module):
    """(x - mean) / std as a fixed part of the graph (no parameters, nothing to train)."""

    mean: torch.Tensor
    inv_std: torch.Tensor

    def __init__(self, mean: float = _MEAN, std: float = _STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("inv_std", torch.tensor(1.0 / std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x``."""
        return (x - self.mean) * self.inv_std


def _conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def fedavg_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """CNN of the FedAvg paper (McMahan et al. 2017): 2x conv5x5 (32, 64) + pool, fc 512."""
    channels, height, width = _image_shape(input_shape)
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def fedavg_2nn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """2NN of the FedAvg paper: two hidden layers of 200 units with ReLU."""
    features = 1
    for dim in input_shape:
        features *= dim
    return nn.Sequential(
        Normalize(),
        nn.Flatten(),
        nn.Linear(features, 200),
        nn.ReLU(),
        nn.Linear(200, 200),
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


def dp_cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Small CNN for DP-SGD (Papernot et al. 2021, "Tempered sigmoid activations").

    Few parameters (noise grows with dimension), tanh activations (bounded
    activations keep per-sample gradients small, so less is lost to clipping),
    no batch norm (it mixes samples, which DP-SGD forbids).
    """
    channels, height, width = _image_shape(input_shape)
    h1, w1 = _conv_out(height, 8, 2, 3), _conv_out(width, 8, 2, 3)
    h1, w1 = _conv_out(h1, 2), _conv_out(w1, 2)
    h2, w2 = _conv_out(h1, 4, 2), _conv_out(w1, 4, 2)
    h2, w2 = _conv_out(h2, 2), _conv_out(w2, 2)
    if min(h2, w2) < 1:
        raise ConfigError(f"dp-cnn needs images of at least 16x16; got {height}x{width}")
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(channels, 16, 8, stride=2, padding=3),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Conv2d(16, 32, 4, stride=2),
        nn.Tanh(),
        nn.MaxPool2d(2, 1),
        nn.Flatten(),
        nn.Linear(32 * h2 * w2, 32),
        nn.Tanh(),
        nn.Linear(32, num_classes),
    )


def dp_cnn_tiny(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """A 4.9k-parameter tanh CNN for DP-SGD on devices with little data.

    Under DP-SGD the noise added to each step grows with the square root of the
    number of parameters while the signal does not: with ~1k samples per device,
    fewer parameters train to a better model at the same ε.  Two strided 5x5
    convolutions (8, 16 channels), average pooling to 3x3, one linear layer.
    """
    channels, height, width = _image_shape(input_shape)
    h, w = (
        _conv_out(_conv_out(height, 5, 2, 2), 5, 2, 2),
        _conv_out(_conv_out(width, 5, 2, 2), 5, 2, 2),
    )
    if min(h, w) < 3:
        raise ConfigError(f"dp-cnn-tiny needs images of at least 12x12; got {height}x{width}")
    hp, wp = _conv_out(h, 3, 2), _conv_out(w, 3, 2)
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(channels, 8, 5, stride=2, padding=2),
        nn.Tanh(),
        nn.Conv2d(8, 16, 5, stride=2, padding=2),
        nn.Tanh(),
        nn.AvgPool2d(3, stride=2),
        nn.Flatten(),
        nn.Linear(16 * hp * wp, num_classes),
    )


def scatternet(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """ScatterNet + linear (Tramèr & Boneh 2021): scattering J = 2, L = 8, GroupNorm, linear.

    The scattering filters are fixed; the GroupNorm (27 groups of 3 maps, no affine
    parameters) normalizes each image on its own (DP-SGD allows no statistic across
    samples), so only the linear layer trains: 39.7k parameters on MNIST.
    """
    channels, height, width = _image_shape(input_shape)
    if channels != 1 or height != width or height % 4:
        raise ConfigError(
            "scatternet takes square grey-scale images with a side divisible by 4 "
            f"(e.g. MNIST's 1x28x28); got {channels}x{height}x{width}"
        )
    scatter = Scattering2d(height, J=2, L=8)
    side = height // 4
    return nn.Sequential(
        Normalize(),
        scatter,
        nn.GroupNorm(27, scatter.maps, affine=False),
        nn.Flatten(),
        nn.Linear(scatter.maps * side * side, num_classes),
    )


def _image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise ConfigError(f"this model needs images (C, H, W); the data has shape {input_shape}")
    return input_shape[0], input_shape[1], input_shape[2]


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: how to build it and what it is for."""

    name: str
    build: Callable[[tuple[int, ...], int], nn.Module]
    description: str


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("fedavg-cnn", fedavg_cnn, "FedAvg paper CNN, 1.66M parameters on MNIST"),
        ModelInfo("fedavg-2nn", fedavg_2nn, "FedAvg paper MLP 784-200-200-10"),
        ModelInfo("dp-cnn", dp_cnn, "26k-parameter tanh CNN suited to DP-SGD"),
        ModelInfo("dp-cnn-tiny", dp_cnn_tiny, "4.9k-parameter tanh CNN for DP-SGD on small data"),
        ModelInfo("scatternet", scatternet, "fixed wavelet scattering + linear, 39.7k trained"),
    )
}


def model_names() -> list[str]:
    """Names accepted by :func:`build_model`."""
    return sorted(MODELS)


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, seed: int | None = None
) -> nn.Module:
    """Build a registered model; ``seed`` makes the initial weights reproducible."""
    info = MODELS.get(name)
    if info is None:
        raise UnknownNameError("model", name, model_names())
    if seed is None:
        return info.build(input_shape, num_classes)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return info.build(input_shape, num_classes)
