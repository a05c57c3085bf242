"""A robust strategy on a deployed fleet: a real SuperLink, 4 enrolled SuperNodes, DP-SGD.

One node is hostile: it trains honestly, then replies with its update scaled x10 (model
replacement). The reply is well-formed, so validation lets it through; Krum must leave it
out of every round's aggregate, and the model must learn as if the node were not there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgeai.flower.runspec import RunSpec
from edgeai.server.superlink import enrolled_nodes, run_to_end, write_app_dir
from tests.integration.test_federation_flower_fleet import (
    Fleet,
    experiment,
    make_shards,
    rounds_of,
)

pytestmark = pytest.mark.integration

POISONED_APP = "tests.integration.poisoned_app:app"
ROUNDS = 3


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet.start(tmp_path / "fed")
    try:
        yield f
    finally:
        f.stop()


@pytest.mark.slow
def test_krum_keeps_a_scaling_node_out_of_every_aggregate(fleet: Fleet, tmp_path: Path) -> None:
    shards = make_shards(tmp_path / "data", 4)
    for i in range(3):  # partition ids the poisoned app leaves honest (it poisons 0-4)
        fleet.add_node(f"honest-{i}", shards[i], extra={"partition-id": str(10 + i)})
    fleet.add_node("hostile", shards[3], extra={"poison": "scale"})
    # Krum picks one update whatever f is; f sets how many neighbours score each (n - f - 2).
    # With 4 nodes f = 1 would need n >= 2f + 3 = 5, so f = 0: scored on the 2 nearest.
    spec = RunSpec(
        experiment=experiment(
            rounds=ROUNDS, nodes=4, strategy={"name": "krum", "num_malicious_nodes": 0}
        ),
        out_dir=tmp_path / "run",
        node_wait_s=120,
    )
    app_dir = write_app_dir(fleet.root / "flwr-home", client_app=POISONED_APP)
    final = run_to_end(fleet.conn, spec, app_dir, timeout_s=400)
    assert final.ok, final

    ids = {n.name: n.node_id for n in enrolled_nodes(fleet.conn)}
    hostile = f"node-{ids['hostile']}"
    rounds = rounds_of(spec)
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    for r in rounds:
        assert (r["sampled"], r["accepted"], r["rejected"]) == (4, 4, 0), r  # all well-formed
        assert hostile in r["discarded"], r  # Krum left the hostile update out
        assert len(r["discarded"]) == 3, r  # and kept exactly one honest update
    assert rounds[-1]["accuracy"] > 0.3, rounds[-1]  # random: 0.1
