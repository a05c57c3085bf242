import math

import pytest
from opacus.accountants import RDPAccountant

from edgeai.errors import PrivacyError
from edgeai.privacy import PrivacyConfig, epsilon_for, noise_for_target


def test_no_steps_spend_nothing_and_zero_noise_spends_everything() -> None:
    assert epsilon_for([], 1e-5) == 0.0
    assert epsilon_for([(0.0, 0.1, 10)], 1e-5) == math.inf


def test_epsilon_matches_opacus_on_its_own_orders() -> None:
    acc = RDPAccountant()
    acc.history = [(1.1, 0.01, 1000)]
    ours = epsilon_for([(1.1, 0.01, 1000)], 1e-5)
    # our grid extends Opacus' orders, so we are never looser and in this regime equal
    assert ours <= acc.get_epsilon(1e-5) + 1e-9
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_epsilon_grows_with_steps_and_shrinks_with_noise() -> None:
    a = epsilon_for([(1.0, 0.05, 100)], 1e-5)
    b = epsilon_for([(1.0, 0.05, 200)], 1e-5)
    c = epsilon_for([(2.0, 0.05, 200)], 1e-5)
    assert a < b
    assert c < b


def test_history_segments_compose() -> None:
    whole = epsilon_for([(1.3, 0.08, 40)], 1e-5)
    split = epsilon_for([(1.3, 0.08, 15), (1.3, 0.08, 25)], 1e-5)
    assert split == pytest.approx(whole, rel=1e-9)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_for_target_meets_the_target_tightly(accountant: str) -> None:
    sigma = noise_for_target(3.0, 1e-5, 0.08, 390, accountant)
    eps = epsilon_for([(sigma, 0.08, 390)], 1e-5, accountant)
    assert eps <= 3.0
    assert eps > 2.9
    # a little less noise would break the target
    assert epsilon_for([(sigma * 0.97, 0.08, 390)], 1e-5, accountant) > 3.0


def test_prv_is_not_looser_than_rdp() -> None:
    history = [(1.0, 0.02, 500)]
    assert epsilon_for(history, 1e-5, "prv") <= epsilon_for(history, 1e-5, "rdp")


def test_impossible_requests_fail_clearly() -> None:
    with pytest.raises(PrivacyError, match="sample rate"):
        noise_for_target(3.0, 1e-5, 0.0, 10)
    with pytest.raises(PrivacyError, match="unknown accountant"):
        epsilon_for([(1.0, 0.1, 1)], 1e-5, "gdp")


def test_privacy_config_requires_exactly_one_noise_source() -> None:
    assert not PrivacyConfig().enabled
    PrivacyConfig(enabled=True, target_epsilon=3.0)
    PrivacyConfig(enabled=True, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="neither"):
        PrivacyConfig(enabled=True)
    with pytest.raises(ValueError, match="contradict"):
        PrivacyConfig(enabled=True, target_epsilon=3.0, noise_multiplier=1.0)
