"""Distributed DP over Flower's SecAgg+: the server's view of a round is only the sum.

A real Flower simulation (Ray) of 5 devices: each clips its update, adds its noise share,
and Flower's secaggplus_mod masks it; Flower's SecAggPlusWorkflow unmasks only the sum.
Every message the server received is searched for any device's vector; the same search
over a plain FedAvg run finds every one of them (so the test can fail).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from flwr.common import bytes_to_ndarray
from flwr.simulation import run_simulation

from edgeai.flower.secagg import ServerView, client_app, server_app
from edgeai.privacy.distributed import NoiseShare, clip_and_share, plan_noise_share

pytestmark = pytest.mark.integration

D, N, T = 2_000, 5, 4
SHARE = plan_noise_share(1.0, 1.0, T, D, devices_per_round=N, rounds=1)


def device_update(partition: int, server_round: int, current: np.ndarray) -> np.ndarray:
    """A device's update: distinct per device, larger than C (so clipping matters)."""
    rng = np.random.default_rng([partition, server_round])
    return rng.normal(0.0, 0.05, current.shape) + (partition - 2) * 0.02


def sent_by(partition: int, share: NoiseShare | None) -> np.ndarray:
    """The vector device ``partition`` submits in round 1 (before SecAgg+ masks it)."""
    delta = device_update(partition, 1, np.zeros(D))
    if share is None:
        return delta
    return clip_and_share(delta, share, np.random.default_rng([partition, 1, 7]))


def arrays_seen(view: ServerView) -> list[np.ndarray]:
    """Every array of numbers in every message the server received, decoded."""
    found: list[np.ndarray] = []
    for msg in view.received:
        for record in msg.content.array_records.values():
            # Legacy parameters travel as np.save bytes inside the Array.
            found.extend(bytes_to_ndarray(arr.data).ravel() for arr in record.values())
        for record in msg.content.config_records.values():
            for value in record.values():
                items: list[Any] = value if isinstance(value, list) else [value]
                for item in items:
                    if isinstance(item, bytes) and len(item) > 8 * D // 2:
                        try:
                            found.append(bytes_to_ndarray(item).ravel())
                        except ValueError:
                            continue  # key material, not an array
    return found


def best_match(arrays: list[np.ndarray], vector: np.ndarray) -> float:
    """The largest |correlation| of ``vector`` with any array of its size."""
    scores = [
        abs(float(np.corrcoef(a.astype(np.float64), vector)[0, 1]))
        for a in arrays
        if a.size == vector.size and np.std(a) > 0
    ]
    return max(scores, default=0.0)


def run(share: NoiseShare | None) -> ServerView:
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
    os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    view = ServerView()
    run_simulation(
        server_app(np.zeros(D, np.float32), 1, N, view, share),
        client_app(device_update, share),
        N,
        backend_config={"client_resources": {"num_cpus": 1}, "init_args": {"num_cpus": 2}},
    )
    return view


def test_the_server_learns_the_noisy_sum_and_no_single_update() -> None:
    view = run(SHARE)
    assert view.survivors == [N]
    sent = [sent_by(p, SHARE) for p in range(N)]
    # The sum (here as the survivors' mean) is what the workflow recovers, to a step or two.
    np.testing.assert_allclose(view.aggregates[0], np.mean(sent, axis=0), atol=4 * SHARE.step)
    seen = arrays_seen(view)
    assert len(seen) >= N  # the masked vectors were found and decoded
    for vector in sent:
        assert best_match(seen, vector) < 0.1  # masked: uniform noise mod 2^32
        # ... while each device's own update is not hidden in the noise of the sum.
        assert abs(float(np.corrcoef(vector, np.sum(sent, axis=0))[0, 1])) > 0.3
    for msg in view.received:  # no per-device metric in the clear besides the weight 1
        for name, record in msg.content.metric_records.items():
            assert set(record) <= {"num_examples"}, (name, dict(record))


def test_without_secaggplus_the_same_search_finds_every_update() -> None:
    view = run(None)
    seen = arrays_seen(view)
    for partition in range(N):
        assert best_match(seen, sent_by(partition, None)) > 0.99
