"""A simulated fleet: profiles by share, offline clients never sampled, late ones dropped."""

from __future__ import annotations

from collections import Counter

import pytest

from edgeai.errors import ConfigError
from edgeai.flower.experiment import Experiment, FleetConfig
from edgeai.profiles.loader import load_profile
from edgeai.simulation.fleet import DeviceClass, assign_profiles, client_seconds, online_mask
from edgeai.simulation.runner import run_experiment


def test_profiles_are_assigned_by_share_and_seed() -> None:
    mix = {"rpi4": 0.5, "rpi5": 0.3, "jetson-orin-nano-8gb": 0.2}
    got = assign_profiles(mix, 200, seed=1)
    assert Counter(got) == {"rpi4": 100, "rpi5": 60, "jetson-orin-nano-8gb": 40}
    assert got == assign_profiles(mix, 200, seed=1)
    assert got != assign_profiles(mix, 200, seed=2)
    # Shares that do not divide the fleet: largest remainder, the total exact.
    assert Counter(assign_profiles({"rpi4": 1, "rpi5": 1, "x86-64-avx2": 1}, 10, 0)) == {
        "rpi4": 4,
        "rpi5": 3,
        "x86-64-avx2": 3,
    }


def test_availability_is_a_fraction_of_rounds() -> None:
    ups = [sum(online_mask([0.6] * 500, seed=0, rnd=r)) for r in range(1, 21)]
    assert 0.55 < sum(ups) / (500 * 20) < 0.65
    assert online_mask([0.6] * 50, 0, 3) == online_mask([0.6] * 50, 0, 3)
    assert online_mask([0.6] * 50, 0, 3) != online_mask([0.6] * 50, 0, 4)


def test_simulated_time_is_download_compute_upload() -> None:
    pi = DeviceClass("pi", relative_compute=0.1, uplink_mbps=10, downlink_mbps=50, availability=1)
    # 1 MB down at 50 Mbit/s, 100 samples at 1 ms on a 0.1 device, 1 MB up at 10 Mbit/s.
    assert client_seconds(pi, 100, 1e-3, 10**6, 10**6) == pytest.approx(0.16 + 1.0 + 0.8)


def test_an_unknown_profile_is_refused_with_the_choices() -> None:
    with pytest.raises((ConfigError, ValueError), match="unknown device profile 'rpi9'"):
        FleetConfig(mix={"rpi9": 1.0})


def test_offline_clients_are_never_sampled_and_slow_ones_miss_the_deadline() -> None:
    rpi4 = load_profile("rpi4").simulation
    x86 = load_profile("x86-64-avx2").simulation
    assert rpi4.relative_compute < x86.relative_compute
    exp = Experiment.model_validate(
        {
            "name": "fleet",
            "seed": 5,
            "model": {"name": "dp-cnn-tiny"},
            "federation": {"num_clients": 20, "clients_per_round": 10, "rounds": 3},
            "training": {"batch_size": 50, "learning_rate": 0.5},
            "simulation": {
                "backend": "vmap",
                # 400 samples a client at 1 ms: 0.4 s on x86-64 (1.0), 4 s on an rpi4 (0.1).
                "fleet": {
                    "mix": {"rpi4": 0.5, "x86-64-avx2": 0.5},
                    "round_deadline_s": 2.0,
                    "sample_seconds": 1e-3,
                },
            },
        }
    )
    result = run_experiment(exp)
    profiles = assign_profiles({"rpi4": 0.5, "x86-64-avx2": 0.5}, 20, seed=5)
    offline_seen = dropped_seen = 0
    for record in result.rounds:
        fleet = result.fleet_rounds[record.round]
        assert len(fleet.sampled) == record.sampled == 10
        assert not set(fleet.sampled) & set(fleet.offline), "an offline client was sampled"
        offline_seen += len(fleet.offline)
        slow = sorted(p for p in fleet.sampled if profiles[p] == "rpi4")
        assert sorted(fleet.dropped) == slow
        assert record.failed == len(slow)
        assert record.accepted == 10 - len(slow)
        assert all(fleet.client_seconds[p] < 2.0 for p in fleet.sampled if p not in slow)
        assert fleet.seconds == (2.0 if slow else max(fleet.client_seconds.values()))
        dropped_seen += len(slow)
    assert offline_seen > 0, "no client was ever offline: the test shows nothing"
    assert dropped_seen > 0
