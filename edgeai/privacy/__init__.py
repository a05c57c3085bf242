"""Differential privacy: device-level DP-SGD (Opacus) and its accounting."""

from edgeai.privacy.accounting import (
    ACCOUNTANTS,
    epsilon_for,
    noise_for_target,
)
from edgeai.privacy.config import CentralPrivacyConfig, PrivacyConfig

__all__ = [
    "ACCOUNTANTS",
    "CentralPrivacyConfig",
    "PrivacyConfig",
    "epsilon_for",
    "noise_for_target",
]
