"""The vectorized RDP curve and σ search give Opacus' numbers (edgeai.privacy.rdp)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.accountants.utils import get_noise_multiplier

from edgeai.privacy.accounting import RDP_ORDERS
from edgeai.privacy.rdp import noise_for_target, rdp_curve

ORDERS = list(RDP_ORDERS)


@pytest.mark.parametrize(
    ("q", "sigma"),
    [
        (0.327, 5.5),  # the quickstart's smallest device
        (0.16, 12.46),  # dp-eps1
        (0.01, 1.1),  # a small rate, little noise: long fractional series
        (0.5, 0.7),
        (1e-4, 0.6),
        (0.999, 3.0),
        (1.0, 2.0),  # no sampling: the closed form
        (0.0, 2.0),
        (0.2, 0.0),  # no noise: infinite
    ],
)
def test_the_curve_is_opacus(q: float, sigma: float) -> None:
    ours = rdp_curve(q, sigma, ORDERS)
    theirs = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=ORDERS))
    assert ours.shape == theirs.shape
    finite = np.isfinite(theirs)
    assert (np.isfinite(ours) == finite).all()
    # Both sum a series of terms near 1 to a total near 1 in floating point: tiny curves
    # (q = 1e-4) differ by rounding, ~1e-14 absolute, in either.
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-8, atol=1e-12)


def test_a_wrong_term_would_be_seen() -> None:
    """The comparison above is tight enough to see a one-term slip in the series."""
    q, sigma = 0.327, 5.5
    ours = rdp_curve(q, sigma, ORDERS)
    shifted = rdp_curve(q, sigma * (1 + 1e-6), ORDERS)
    assert np.abs(shifted / ours - 1).max() > 1e-7


@pytest.mark.parametrize(
    ("epsilon", "q", "steps"),
    [(3.0, 0.327, 120), (1.0, 0.16, 420), (8.0, 0.01, 3000), (0.5, 1.0, 10)],
)
def test_sigma_is_opacus_bisection(epsilon: float, q: float, steps: int) -> None:
    ours = noise_for_target(epsilon, 1e-5, q, steps, orders=ORDERS, tolerance=0.005)
    theirs = get_noise_multiplier(
        target_epsilon=epsilon,
        target_delta=1e-5,
        sample_rate=q,
        steps=steps,
        accountant="rdp",
        epsilon_tolerance=0.005,
        alphas=ORDERS,
    )
    assert math.isclose(ours, theirs, rel_tol=1e-12)


def test_an_unreachable_budget_is_refused_as_opacus_does() -> None:
    with pytest.raises(ValueError, match="privacy budget is too low"):
        noise_for_target(1e-9, 1e-5, 1.0, 10**6, orders=ORDERS, tolerance=0.005)
