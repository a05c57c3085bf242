"""ε recomputed from a run's summary.json with Google's dp-accounting (not Opacus)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeai.errors import PrivacyError
from edgeai.privacy.accounting import epsilon_for
from edgeai.privacy.recompute import recompute_epsilon

RESULTS = Path(__file__).resolve().parents[2] / "simulations" / "results"
# The seed's ε = 1 experiment: 10 devices, 60 rounds of one epoch, q = 0.16, PRV.
DP_EPS1 = {"noise_multiplier": 12.4609375, "sample_rate": 0.16, "steps": 420, "delta": 1e-5}


def test_the_seed_eps1_run_recomputes_within_one_percent() -> None:
    summary = json.loads((RESULTS / "dp-eps1" / "summary.json").read_text(encoding="utf-8"))
    result = recompute_epsilon(summary["privacy"])
    assert result.method == "dp-accounting PLD"
    assert summary["privacy"]["epsilon"] <= 1.0
    assert result.relative_difference < 0.01, result


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_opacus_and_dp_accounting_agree_on_the_same_session(accountant: str) -> None:
    s, q, n, d = DP_EPS1.values()
    ours = epsilon_for([(s, q, int(n))], d, accountant)
    result = recompute_epsilon({**DP_EPS1, "epsilon": ours, "accountant": accountant})
    assert result.relative_difference < 0.005, result


def test_a_misreported_session_is_caught() -> None:
    honest = epsilon_for([(12.4609375, 0.16, 420)], 1e-5, "prv")
    # The steps of one round fewer, or a σ 3 % larger than the one that ran: > 1 % off.
    for wrong in ({"steps": 413}, {"noise_multiplier": 12.4609375 * 1.03}):
        result = recompute_epsilon({**DP_EPS1, **wrong, "epsilon": honest, "accountant": "prv"})
        assert result.relative_difference > 0.01, (wrong, result)


def test_an_incomplete_privacy_object_is_refused() -> None:
    with pytest.raises(PrivacyError, match="noise_multiplier"):
        recompute_epsilon({"sample_rate": 0.1, "steps": 1, "delta": 1e-5, "epsilon": 1.0})
    with pytest.raises(PrivacyError, match="Poisson"):
        recompute_epsilon({**DP_EPS1, "epsilon": 1.0, "poisson_sampling": False})
    with pytest.raises(PrivacyError, match="accountant"):
        recompute_epsilon({**DP_EPS1, "epsilon": 1.0, "accountant": "gdp"})
