"""A bad [strategy] or [attack] fails ``edgeai simulate`` with exit 2 and one clear message.

Each is refused while the experiment is read: before Ray, torch training or any output.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.support.cli import simulate_cli

pytestmark = pytest.mark.integration

BASE = """
name = "bad-strategy"
[model]
name = "fedavg-2nn"
[federation]
num_clients = 20
clients_per_round = {per_round}
rounds = 1
"""


def simulate(tmp_path: Path, tail: str, per_round: int = 10) -> subprocess.CompletedProcess[str]:
    exp = tmp_path / "exp.toml"
    exp.write_text(BASE.format(per_round=per_round) + tail)
    return simulate_cli(exp, tmp_path / "out")


@pytest.mark.parametrize(
    ("tail", "expected"),
    [
        (
            '[strategy]\nname = "fedmedain"\n',
            "strategy.name = 'fedmedain': unknown strategy; did you mean 'fedmedian'?",
        ),
        (
            '[strategy]\nname = "krum"\nproximal_mu = 0.1\n',
            "strategy.proximal_mu: krum does not take 'proximal_mu' (it takes "
            "num_malicious_nodes); remove it",
        ),
        (
            '[strategy]\nname = "fedyogi"\neta_l = 0.1\n',
            "the clients' learning rate is training.learning_rate",
        ),
        (
            '[strategy]\nname = "krum"\nnum_malicious_nodes = 4\n',
            "strategy.num_malicious_nodes = 4: krum needs at least 2f + 3 = 11 clients per "
            "round, but a round has 10; raise federation.clients_per_round",
        ),
        (
            '[strategy]\nname = "bulyan"\nnum_malicious_nodes = 2\n',
            "bulyan needs at least 4f + 3 = 11 clients per round, but a round has 10",
        ),
        (
            '[attack]\nkind = "sign-flip"\nfraction = 1.0\n',
            "attack.fraction = 1.0: must be in [0, 1)",
        ),
        ('[attack]\nkind = "nan"\nfraction = -0.2\n', "attack.fraction = -0.2: must be in [0, 1)"),
        (
            '[strategy]\nname = "fedmedian"\n[central_privacy]\nenabled = true\n'
            "noise_multiplier = 1.0\n",
            "client-level DP (central_privacy) runs with fedavg only",
        ),
    ],
)
def test_a_bad_strategy_or_attack_exits_2_before_anything_starts(
    tmp_path: Path, tail: str, expected: str
) -> None:
    done = simulate(tmp_path, tail)
    assert done.returncode == 2, done.stderr + done.stdout
    message = " ".join(done.stderr.split())
    assert expected in message, message
    assert "exp.toml" in message  # the file is named
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran: no results, no Ray
