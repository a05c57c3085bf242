"""An empirical privacy audit of the server's client-level DP, with a canary client.

The mechanism under audit is :func:`aggregate_with_noise` over m sampled clients.
In one world a canary client (a huge update in a fixed direction) is among them,
in the other it is not; the distinguisher thresholds the projection of the
aggregate on the canary direction.  The real mechanism must not show more ε than
the accountant claims; two deliberately broken ones must — so the audit can fail.
"""

from collections.abc import Callable, Mapping

import dp_accounting
import numpy as np
import pytest
from scipy import stats

from edgeai.errors import PrivacyError
from edgeai.privacy.audit import (
    clopper_pearson,
    epsilon_lower_bound,
    gaussian_epsilon,
    run_audit,
)
from edgeai.privacy.central import ClientLevelAccountant, NoisyAggregate, aggregate_with_noise

DELTA = 1e-5
Z, CLIP, M = 1.0, 1.0, 6  # noise multiplier, clip norm, clients sampled per round
TRIALS = 5000  # per world, per half: 20 000 runs of the mechanism per audit

Aggregate = Callable[[list[Mapping[str, np.ndarray]], np.random.Generator], NoisyAggregate]


def real(updates: list[Mapping[str, np.ndarray]], rng: np.random.Generator) -> NoisyAggregate:
    return aggregate_with_noise(updates, CLIP, Z, M, rng)


def noise_divided_by_m_twice(
    updates: list[Mapping[str, np.ndarray]], rng: np.random.Generator
) -> NoisyAggregate:
    # the classic bug: scale the noise to the mean, then divide by m again
    return aggregate_with_noise(updates, CLIP, Z / M, M, rng)


def clipping_skipped(
    updates: list[Mapping[str, np.ndarray]], rng: np.random.Generator
) -> NoisyAggregate:
    # noise calibrated for C, but updates are never clipped
    huge = 1e9
    return aggregate_with_noise(updates, huge, Z * CLIP / huge, M, rng)


def canary_sampler(mechanism: Aggregate) -> Callable[[bool, int, np.random.Generator], np.ndarray]:
    setup = np.random.default_rng(0)
    honest = [{"w": setup.normal(scale=0.3, size=2)} for _ in range(M - 1)]
    direction = np.array([1.0, 0.0])
    canary = {"w": 50.0 * direction}

    def sample(include: bool, n: int, rng: np.random.Generator) -> np.ndarray:
        updates = [*honest, canary] if include else honest
        return np.array([mechanism(updates, rng).arrays["w"] @ direction for _ in range(n)])

    return sample


@pytest.fixture(scope="module")
def claimed() -> float:
    # one release of the whole population (q = 1), as the accountant sees it
    return ClientLevelAccountant("poisson", [(Z, 1.0, 1)]).epsilon(DELTA)


def test_the_real_mechanism_passes_the_audit(claimed: float) -> None:
    result = run_audit(canary_sampler(real), TRIALS, DELTA, np.random.default_rng(1))
    assert result.epsilon_lb <= gaussian_epsilon(1 / Z, DELTA) <= claimed
    assert result.epsilon_lb > 1.0  # the audit has power: it is not vacuously low


@pytest.mark.parametrize("broken", [noise_divided_by_m_twice, clipping_skipped])
def test_a_broken_mechanism_fails_the_audit(broken: Aggregate, claimed: float) -> None:
    result = run_audit(canary_sampler(broken), TRIALS, DELTA, np.random.default_rng(2))
    assert result.epsilon_lb > claimed


def test_the_audit_of_an_exact_gaussian_approaches_its_true_epsilon() -> None:
    # vectorised: 200 000 runs of a unit-sensitivity Gaussian with σ = 1
    def sample(include: bool, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(size=n) + (1.0 if include else 0.0)

    result = run_audit(sample, 200_000, DELTA, np.random.default_rng(3))
    exact = gaussian_epsilon(1.0, DELTA)
    assert 0.6 * exact < result.epsilon_lb <= exact


def test_gaussian_epsilon_matches_dp_accounting() -> None:
    for sigma in (0.5, 1.0, 2.0, 5.0):
        ours = gaussian_epsilon(1 / sigma, DELTA)
        assert ours == pytest.approx(dp_accounting.get_epsilon_gaussian(sigma, DELTA), rel=1e-3)


def test_clopper_pearson_matches_scipy_exact_interval() -> None:
    for k, n in [(0, 10), (3, 10), (10, 10), (17, 5000), (0, 200_000)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert clopper_pearson(k, n) == pytest.approx((ci.low, ci.high), rel=1e-9, abs=1e-15)
    with pytest.raises(PrivacyError):
        clopper_pearson(11, 10)


def test_epsilon_lower_bound_formula() -> None:
    n = 1000
    fpr_ub = clopper_pearson(0, n)[1]
    fnr_ub = clopper_pearson(500, n)[1]
    expected = np.log((1 - DELTA - fnr_ub) / fpr_ub)
    assert epsilon_lower_bound(0, n, 500, n, delta=DELTA) == pytest.approx(expected)
    # symmetric in the two error types
    assert epsilon_lower_bound(500, n, 0, n, delta=DELTA) == pytest.approx(expected)
    # a coin flip proves nothing
    assert epsilon_lower_bound(500, n, 500, n, delta=DELTA) == 0.0
    # more trials, tighter bound
    assert epsilon_lower_bound(0, 10 * n, 0, 10 * n, delta=DELTA) > epsilon_lower_bound(
        0, n, 0, n, delta=DELTA
    )
