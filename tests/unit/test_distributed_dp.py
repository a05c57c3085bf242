"""Distributed DP noise shares: the SecAgg+ sum carries the central noise, dropouts included."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.common.secure_aggregation.quantization import dequantize, quantize

from edgeai.errors import ConfigError, DataError, PrivacyError
from edgeai.flower.client_app import noise_share_of
from edgeai.flower.distributed import share_to_json
from edgeai.flower.experiment import load_experiment
from edgeai.privacy.distributed import clip_and_share, plan_noise_share

D = 5_000


def _plan(min_survivors: int = 7):  # type: ignore[no-untyped-def]
    return plan_noise_share(1.0, 1.2, min_survivors, D, devices_per_round=10, rounds=100)


def test_the_sum_of_any_allowed_survivors_has_at_least_the_central_noise() -> None:
    share = _plan(min_survivors=7)
    rng = np.random.default_rng(0)
    central = share.noise_multiplier * share.clip_norm
    for survivors in (7, 8, 10):  # up to 3 of 10 drop: still >= zC
        total = sum(clip_and_share(np.zeros(D), share, rng) for _ in range(survivors))
        measured = float(np.std(total))
        assert measured >= 0.97 * central, (survivors, measured)
        assert share.sum_std(survivors) >= central
    # Calibrating for all 10 instead of the threshold would leave 7 survivors short.
    naive = plan_noise_share(1.0, 1.2, 10, D, devices_per_round=10, rounds=100)
    assert naive.share_std * np.sqrt(7) < central
    with pytest.raises(PrivacyError, match="threshold"):
        share.sum_std(6)


def test_each_device_clips_its_update_to_c() -> None:
    share = _plan()
    big = np.full(D, 10.0)
    quiet = plan_noise_share(1.0, 1e-9, 7, D, devices_per_round=10, rounds=1)
    assert np.linalg.norm(clip_and_share(big, quiet, np.random.default_rng(1))) == pytest.approx(
        1.0, rel=1e-6
    )
    with pytest.raises(PrivacyError, match="NaN"):
        clip_and_share(np.full(D, np.nan), share, np.random.default_rng(1))
    with pytest.raises(PrivacyError, match="coordinates"):
        clip_and_share(np.zeros(D + 1), share, np.random.default_rng(1))


def test_secaggplus_quantization_keeps_the_shares_within_range_and_a_step() -> None:
    share = _plan()
    rng = np.random.default_rng(2)
    vec = clip_and_share(rng.normal(0, 1, D), share, rng)
    assert np.abs(vec).max() < share.clip_range  # nothing clipped by SecAgg+'s range
    back = dequantize(quantize([vec], share.clip_range, 2**22), share.clip_range, 2**22)[0]
    assert np.abs(back - vec).max() <= share.step
    assert share.sensitivity - share.clip_norm <= 0.01


def test_impossible_plans_are_refused() -> None:
    with pytest.raises(PrivacyError, match="min_survivors"):
        plan_noise_share(1.0, 1.0, 11, D, devices_per_round=10, rounds=1)
    with pytest.raises(PrivacyError, match="more bits"):
        plan_noise_share(1.0, 1.0, 2, 10**9, devices_per_round=10, rounds=1, bits=8)


# -- the experiment file and the device's check of what the server sends -----------------


def _experiment(central: str, extra: str = "", per_round: int = 5) -> str:
    return (
        'name = "x"\n[model]\nname = "dp-cnn-tiny"\n'
        f"[federation]\nnum_clients = 10\nclients_per_round = {per_round}\nrounds = 2\n"
        f"[central_privacy]\nenabled = true\ntarget_epsilon = 3.0\n{central}\n{extra}"
    )


@pytest.mark.parametrize(
    ("central", "extra", "per_round", "message"),
    [
        ('mode = "distributed"', "", 2, "at least 3 devices per round"),
        ('mode = "distributed"\nmin_survivors = 6', "", 5, "min_survivors = 6 exceeds"),
        ("min_survivors = 3", "", 5, 'mode = "distributed" only'),
        ('mode = "distributed"', '[simulation]\nbackend = "vmap"', 5, "vmap backend"),
        ('mode = "distributed"', '[attack]\nkind = "sign-flip"\nfraction = 0.2', 5, "[attack]"),
        ('mode = "secure"', "", 5, "central_privacy.mode"),
    ],
)
def test_a_distributed_experiment_secagg_cannot_run_is_refused(
    tmp_path: Path, central: str, extra: str, per_round: int, message: str
) -> None:
    path = tmp_path / "x.toml"
    path.write_text(_experiment(central, extra, per_round), encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_experiment(path)


def test_the_threshold_defaults_to_four_fifths_of_a_round(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(_experiment('mode = "distributed"', per_round=10), encoding="utf-8")
    central = load_experiment(path).central_privacy
    assert central.survivors_needed(10) == 8
    assert central.survivors_needed(3) == 3


def test_a_device_refuses_a_malformed_or_weakened_noise_share() -> None:
    good = plan_noise_share(1.0, 1.2, 4, 100, devices_per_round=5, rounds=10)
    assert noise_share_of(share_to_json(good)) == good
    weakened = json.loads(share_to_json(good)) | {"clip_range": 0.5}  # clips away the noise
    hostile = [
        "",
        "{",
        "[]",
        json.dumps({"clip_norm": 1.0}),
        json.dumps(json.loads(share_to_json(good)) | {"noise_multiplier": -1}),
        json.dumps(json.loads(share_to_json(good)) | {"min_survivors": 0}),
        json.dumps(weakened),
        "9" * 5000,
    ]
    for raw in hostile:
        with pytest.raises(DataError):
            noise_share_of(raw)
