"""Distributed client-level DP: each device clips its update and adds a share of the noise.

Client-level DP-FedAvg (:mod:`edgeai.privacy.central`) trusts the server to add
N(0, (zC)²) to the sum of the clipped updates. Here every device adds its own share,
N(0, (zC)²/t) per coordinate, before secure aggregation (SecAgg+): the server only ever
sees the sum, which carries N(0, (zC)²·k/t) from the k devices that survived the round.
Calibrating for ``t`` = the fewest survivors SecAgg+ accepts (its reconstruction
threshold) keeps the sum's noise at least zC however many drop (k ≥ t), so the
accountant's z holds; more survivors only add noise.

SecAgg+ works on integers: each device's vector is clipped to [-R, R] coordinate-wise and
stochastically rounded to a grid of step 2R / 2^bits (Flower's ``quantize``). Two effects
are accounted for here:

- the range R is set so a coordinate of (update + noise share) falls outside it with
  probability at most ``clip_failure`` over the whole run (union bound over devices,
  coordinates and rounds); that probability is added to δ;
- stochastic rounding is unbiased, and moves each coordinate by less than one step:
  the sensitivity grows from C to C + √d·step, and z is applied to that larger norm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from numpy.typing import NDArray

from edgeai.errors import PrivacyError

QUANTIZATION_BITS = 22  # Flower's default quantization_range 2**22
MODULUS_BITS = 32  # ... and modulus_range 2**32


@dataclass(frozen=True)
class NoiseShare:
    """What each device adds so the SecAgg+ sum carries the central noise."""

    clip_norm: float  # C: the L2 bound of one device's update
    noise_multiplier: float  # z: of the central mechanism the accountant sees
    min_survivors: int  # t: SecAgg+'s reconstruction threshold (a round needs t replies)
    dimension: int  # d: coordinates in an update
    clip_range: float  # R: SecAgg+'s clipping_range for (update + share)
    step: float  # 2R / 2^bits: the quantization step

    @property
    def share_std(self) -> float:
        """Per-coordinate std of one device's noise: z·C'/√t (C' includes the rounding)."""
        return self.noise_multiplier * self.sensitivity / math.sqrt(self.min_survivors)

    @property
    def sensitivity(self) -> float:
        """C + √d·step: the clipped update's norm after stochastic rounding, at most."""
        return self.clip_norm + math.sqrt(self.dimension) * self.step

    def sum_std(self, survivors: int) -> float:
        """Per-coordinate noise std of the sum over ``survivors`` devices."""
        if survivors < self.min_survivors:
            raise PrivacyError(
                f"{survivors} survivors are fewer than the SecAgg+ threshold "
                f"{self.min_survivors}: the round must be aborted, not aggregated"
            )
        return self.share_std * math.sqrt(survivors)


def plan_noise_share(
    clip_norm: float,
    noise_multiplier: float,
    min_survivors: int,
    dimension: int,
    *,
    devices_per_round: int,
    rounds: int,
    clip_failure: float = 1e-9,
    bits: int = QUANTIZATION_BITS,
) -> NoiseShare:
    """The noise share and SecAgg+ ranges for a run; ``clip_failure`` is added to δ."""
    if not (clip_norm > 0 and noise_multiplier > 0 and dimension >= 1):
        raise PrivacyError("clip_norm, noise_multiplier and dimension must be positive")
    if not 1 <= min_survivors <= devices_per_round:
        raise PrivacyError(
            f"min_survivors = {min_survivors} must be in [1, devices_per_round = "
            f"{devices_per_round}]"
        )
    if not 0 < clip_failure < 1:
        raise PrivacyError(f"clip_failure must be in (0, 1); got {clip_failure}")
    # A coordinate of (update + share) exceeds R = C + k·std with probability < 2Φ(-k)
    # (|update_i| ≤ C); union over every coordinate a device sends in the run.
    tries = dimension * devices_per_round * rounds
    k = -NormalDist().inv_cdf(clip_failure / (2 * tries))
    rough_std = noise_multiplier * clip_norm / math.sqrt(min_survivors)
    # The range depends on the std, the std on the step (through C'), the step on the
    # range: one fixed-point pass with the step's effect bounded by 1 % of C settles it.
    clip_range = clip_norm + k * rough_std * 1.01
    step = 2 * clip_range / 2**bits
    share = NoiseShare(clip_norm, noise_multiplier, min_survivors, dimension, clip_range, step)
    if math.sqrt(dimension) * step > 0.01 * clip_norm:
        raise PrivacyError(
            f"{bits}-bit quantization of a {dimension}-coordinate update is too coarse "
            f"(rounding adds {math.sqrt(dimension) * step:.3g} to C = {clip_norm}); use more bits"
        )
    return share


def clip_and_share(
    update: NDArray[np.floating], share: NoiseShare, rng: np.random.Generator
) -> NDArray[np.float64]:
    """One device's contribution: its update clipped to C in L2, plus its noise share."""
    flat = np.asarray(update, np.float64).ravel()
    if flat.size != share.dimension:
        raise PrivacyError(f"update has {flat.size} coordinates; the plan says {share.dimension}")
    if not np.isfinite(flat).all():
        raise PrivacyError("update holds NaN or Inf; a device sends nothing rather than that")
    norm = float(np.linalg.norm(flat))
    clipped = flat * min(1.0, share.clip_norm / norm) if norm > 0 else flat
    return clipped + rng.normal(0.0, share.share_std, flat.size)
