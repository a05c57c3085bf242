"""Settings of device-level DP-SGD, validated when read."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from edgeai.configfile import Frozen
from edgeai.errors import ConfigError


class PrivacyConfig(Frozen):
    """DP-SGD on every device: clip each sample's gradient to ``max_grad_norm``, add noise.

    Give either ``noise_multiplier`` (σ) or ``target_epsilon`` (σ is then derived
    so that a client that joins every round spends at most ``target_epsilon`` at
    ``delta`` by the end of the run).
    """

    enabled: bool = False
    noise_multiplier: float | None = Field(default=None, ge=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    accountant: Literal["rdp", "prv"] = "rdp"
    # The device's lifetime budget, enforced by its privacy ledger across rounds and
    # runs; default: target_epsilon.  With only noise_multiplier and no budget, the
    # ledger records the spend without refusing.
    budget_epsilon: float | None = Field(default=None, gt=0)
    # Opacus' per-sample gradient engine: "hooks" (default) or "ghost" (ghost clipping).
    grad_sample_mode: Literal["hooks", "ghost", "functorch"] = "hooks"

    @model_validator(mode="after")
    def _exactly_one_noise_source(self) -> PrivacyConfig:
        if not self.enabled:
            return self
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError(
                "privacy is enabled but neither noise_multiplier nor target_epsilon is set; "
                "set one of them"
            )
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ConfigError(
                "noise_multiplier and target_epsilon contradict each other; "
                "set only one (target_epsilon derives the noise)"
            )
        return self

    @property
    def budget(self) -> float | None:
        """The ε a device may spend in total (None: record the spend, refuse nothing)."""
        return self.budget_epsilon if self.budget_epsilon is not None else self.target_epsilon


class CentralPrivacyConfig(Frozen):
    """Client-level DP on the server (DP-FedAvg, McMahan et al. 2018).

    Each round samples every client independently with probability
    clients_per_round / num_clients (Poisson), clips each client's update to
    ``clip_norm``, sums, adds N(0, (z·C)²) and divides by the expected number of
    clients.  ε (who took part, not which samples) is accounted with sampling
    amplification by ``dp-accounting``; the server stops before a round that
    would take it past ``budget_epsilon`` (default: target_epsilon).
    """

    enabled: bool = False
    noise_multiplier: float | None = Field(default=None, ge=0)
    target_epsilon: float | None = Field(default=None, gt=0)
    budget_epsilon: float | None = Field(default=None, gt=0)
    delta: float = Field(default=1e-5, gt=0, lt=1)
    clip_norm: float = Field(default=1.0, gt=0)
    mode: Literal["trusted", "distributed"] = "trusted"
    min_survivors: int | None = Field(default=None, ge=2)

    @model_validator(mode="after")
    def _exactly_one_noise_source(self) -> CentralPrivacyConfig:
        if self.enabled and (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError(
                "client-level DP needs exactly one of noise_multiplier and target_epsilon"
            )
        if self.min_survivors is not None and self.mode != "distributed":
            raise ConfigError(
                "central_privacy.min_survivors is SecAgg+'s threshold: it applies to "
                'mode = "distributed" only; remove it or set mode = "distributed"'
            )
        return self

    def survivors_needed(self, per_round: int) -> int:
        """SecAgg+'s threshold: ``min_survivors``, or 80 % of a round's devices (at least 2)."""
        if self.min_survivors is not None:
            return self.min_survivors
        return max(2, math.ceil(0.8 * per_round))

    @property
    def budget(self) -> float | None:
        """The ε the server may release in total (None: account, refuse nothing)."""
        return self.budget_epsilon if self.budget_epsilon is not None else self.target_epsilon
