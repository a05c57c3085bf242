"""Pure privacy accounting over a DP-SGD history, through Opacus' accountants.

A history is a list of ``(noise_multiplier, sample_rate, steps)`` — the same
form Opacus keeps — so it can be stored as plain numbers and recomputed by
anyone with an independent library.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray

from edgeai.cache import cache_dir, key_of
from edgeai.errors import PrivacyError
from edgeai.plumbing.files import atomic_write
from edgeai.privacy.config import PrivacyConfig
from edgeai.privacy.rdp import epsilon as rdp_epsilon
from edgeai.privacy.rdp import noise_for_target as rdp_noise
from edgeai.privacy.rdp import rdp_curve

ACCOUNTANTS = ("rdp", "prv")
PRV_EPS_ERROR = 1e-3
_TOLERANCE = 0.005  # of the σ search: ε within this below the target
History = Sequence[tuple[float, float, int]]
# Opacus' default RDP orders stop at 63; large-σ, few-step regimes (a device that
# trains a few rounds) are tightest at higher orders, so we extend the grid.
RDP_ORDERS = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)) + [80, 96, 128, 192, 256, 512, 1024]
)


def _accountant(name: str, history: History):  # type: ignore[no-untyped-def]
    from opacus.accountants import create_accountant  # noqa: PLC0415  (train extra)

    if name not in ACCOUNTANTS:
        raise PrivacyError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    acc = create_accountant(mechanism=name)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history if n > 0]
    return acc


def epsilon_for(history: History, delta: float, accountant: str = "rdp") -> float:
    """ε at ``delta`` after every step in ``history`` (0 for an empty history)."""
    # Composition over identical (σ, q) segments is additive in the steps: merge them,
    # so a device's ε costs the same to compute in round 500 as in round 1.
    merged: dict[tuple[float, float], int] = {}
    for s, q, n in history:
        if n > 0:
            merged[(float(s), float(q))] = merged.get((float(s), float(q)), 0) + int(n)
    steps = tuple(sorted((s, q, n) for (s, q), n in merged.items()))
    if not steps:
        return 0.0
    if any(s == 0 for s, _, _ in steps):
        return math.inf
    return _epsilon(steps, float(delta), accountant)


@lru_cache(maxsize=1024)
def _epsilon(steps: tuple[tuple[float, float, int], ...], delta: float, accountant: str) -> float:
    # Memoised: the devices of an IID run share one history, and PRV at a tight eps_error
    # takes about 0.5 s per question.
    if accountant == "rdp":
        return _rdp_epsilon(steps, delta)
    acc = _accountant(accountant, steps)
    # Opacus' PRV answers an upper bound within eps_error (absolute, 0.01 by default: 1 %
    # of ε = 1); 1e-3 keeps the recorded ε within 0.1 % of an independent PLD recomputation.
    return float(acc.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def _rdp_epsilon(steps: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus' RDPAccountant.get_epsilon over RDP_ORDERS, from memoised per-step curves.

    RDP composes additively, so a history's curve is Σ steps · rdp(σ, q): each (σ, q) is
    evaluated once per process instead of once per question (edgeai.privacy.rdp).
    """
    rdp = sum(n * _rdp_curve(s, q) for s, q, n in steps)
    return rdp_epsilon(rdp, RDP_ORDERS, delta)


@lru_cache(maxsize=4096)
def _rdp_curve(sigma: float, q: float) -> NDArray[np.float64]:
    curve = rdp_curve(q, sigma, RDP_ORDERS)
    curve.flags.writeable = False  # shared by every caller
    return curve


@lru_cache(maxsize=256)
def noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier σ that keeps ε ≤ ``target_epsilon`` after ``steps``.

    Memoised in this process and on disk: every simulated device (and every
    round) asks the same question, and each answer costs a bisection over the
    accountant (milliseconds with RDP, seconds with PRV).
    """
    path = (
        cache_dir("noise") / f"{key_of(target_epsilon, delta, sample_rate, steps, accountant)}.json"
    )
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["sigma"])
    except (OSError, ValueError, KeyError):
        pass  # not computed yet (or a torn file): compute it
    sigma = _noise_for_target(target_epsilon, delta, sample_rate, steps, accountant)
    atomic_write(path, json.dumps({"sigma": sigma}), durable=False)  # a cache: recomputed if lost
    return sigma


def _noise_for_target(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str = "rdp"
) -> float:
    """The smallest noise multiplier σ that keeps ε ≤ ``target_epsilon`` after ``steps``."""
    if not 0 < sample_rate <= 1:
        raise PrivacyError(f"sample rate must be in (0, 1]; got {sample_rate}")
    if steps < 1:
        raise PrivacyError(f"steps must be >= 1; got {steps}")
    try:
        if accountant == "rdp":  # the same bisection, on the vectorized curve
            return rdp_noise(
                target_epsilon, delta, sample_rate, steps, orders=RDP_ORDERS, tolerance=_TOLERANCE
            )
        from opacus.accountants.utils import get_noise_multiplier  # noqa: PLC0415

        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=accountant,
                epsilon_tolerance=_TOLERANCE,
            )
        )
    except ValueError as exc:
        raise PrivacyError(
            f"cannot reach ε = {target_epsilon} at δ = {delta} with sample rate {sample_rate:.4g} "
            f"over {steps} steps: {exc}; raise target_epsilon or lower the number of steps"
        ) from exc


def dp_session(
    num_examples: int,
    batch_size: int,
    local_epochs: int,
    privacy: PrivacyConfig,
    num_rounds: int,
) -> tuple[float, float, int]:
    """The DP-SGD session one round of local training runs: (σ, q = B/n, steps).

    Known before training, so a privacy ledger can refuse it up front.  σ is the
    configured one, or the one that keeps a device joining all ``num_rounds``
    rounds within ``privacy.target_epsilon``.
    """
    sample_rate = min(1.0, batch_size / num_examples)
    steps = max(1, math.ceil(1 / sample_rate)) * local_epochs
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier, sample_rate, steps
    if privacy.target_epsilon is None:
        raise PrivacyError("privacy needs noise_multiplier or target_epsilon")
    sigma = noise_for_target(
        privacy.target_epsilon, privacy.delta, sample_rate, steps * num_rounds, privacy.accountant
    )
    return sigma, sample_rate, steps
