"""End to end through Flower's simulation engine (Ray): real processes, real data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeai.data import load_dataset
from edgeai.flower.experiment import load_experiment
from edgeai.models.checkpoint import load_checkpoint
from edgeai.privacy import epsilon_for
from edgeai.simulation.runner import run_experiment

pytestmark = pytest.mark.integration

E2E = """
name = "e2e"
seed = 1
[model]
name = "dp-cnn"
[data.partition]
kind = "dirichlet"
alpha = 0.5
[federation]
num_clients = 4
rounds = 2
[training]
batch_size = 64
learning_rate = 1.0
[privacy]
enabled = true
target_epsilon = 3.0
delta = 1e-5
[simulation]
num_cpus = 2
"""


def test_two_rounds_four_clients_with_dp_through_the_cli(tmp_path: Path) -> None:
    exp = tmp_path / "e2e.toml"
    exp.write_text(E2E, encoding="utf-8")
    out = tmp_path / "out"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "COLUMNS": "120"}
    proc = subprocess.run(
        [sys.executable, "-m", "edgeai.cli", "simulate", str(exp), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    assert str(out) in proc.stdout

    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    for r in rounds:
        assert {"round", "accuracy", "loss", "epsilon", "bytes_up", "bytes_down", "seconds"} <= set(
            r
        )
        assert r["accepted"] == 4
        assert r["rejected"] == 0
        assert r["bytes_up"] > 0
        assert r["bytes_down"] > 0
    # The device ledger survives between rounds: ε grows, and stays within the target.
    assert 0 < rounds[0]["epsilon"] < rounds[1]["epsilon"] <= 3.0 * 1.01

    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["accountant"] == "rdp"
    recomputed = epsilon_for(
        [(privacy["noise_multiplier"], privacy["sample_rate"], privacy["steps"])],
        privacy["delta"],
        privacy["accountant"],
    )
    assert math.isclose(recomputed, privacy["epsilon"], rel_tol=1e-9)
    assert math.isclose(summary["epsilon"], privacy["epsilon"], rel_tol=1e-9)
    assert summary["delta"] == 1e-5
    assert summary["config"]["federation"]["num_clients"] == 4

    # The exported model takes [0, 1] pixels (normalization inside) and scores what the server saw.
    val = load_dataset("mnist").validation
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": val.x})
    accuracy = float((logits.argmax(1) == val.y).mean())
    assert abs(accuracy - summary["accuracy"]) < 1e-3
    meta = {e.key: e.value for e in onnx.load(str(out / "model.onnx")).metadata_props}
    assert float(meta["edgeai.epsilon"]) == pytest.approx(summary["epsilon"])
    assert float(meta["edgeai.delta"]) == 1e-5
    assert (out / "accuracy.png").stat().st_size > 1000
    assert (out / "epsilon.png").stat().st_size > 1000
    ckpt = load_checkpoint(out / "checkpoint.npz")  # what `edgeai compile` also takes
    assert (ckpt.model, ckpt.round) == (summary["model"]["name"], summary["rounds"])
    assert ckpt.provenance["edgeai.epsilon"] == pytest.approx(summary["epsilon"])


def test_poisoned_replies_are_rejected_and_counted(tmp_path: Path) -> None:
    from tests.integration.poisoned_app import POISONED  # noqa: PLC0415
    from tests.integration.poisoned_app import app as poisoned_app  # noqa: PLC0415

    exp_path = tmp_path / "poison.toml"
    exp_path.write_text(
        'name = "poison"\n[model]\nname = "fedavg-2nn"\n'
        "[federation]\nnum_clients = 8\nrounds = 2\n"
        "[training]\nbatch_size = 32\nlearning_rate = 0.1\n"
        "[simulation]\nnum_cpus = 2\n",
        encoding="utf-8",
    )
    result = run_experiment(load_experiment(exp_path), client_app=poisoned_app)
    assert result.final is not None
    assert result.final.rejected_total == 2 * len(POISONED)
    for r in result.rounds:
        assert r.rejected == len(POISONED)
        assert r.accepted == 8 - len(POISONED)
        assert any("NaN or Inf" in p for p in r.problems)
    arrays = result.final.arrays.to_numpy_ndarrays()
    assert all(np.isfinite(a).all() for a in arrays)
    assert result.rounds[-1].accuracy > 0.7  # 3 honest clients, 2 rounds; random is 0.1


def test_a_tight_budget_stops_devices_at_the_right_round(tmp_path: Path) -> None:
    from edgeai.privacy.ledger import PrivacyLedger  # noqa: PLC0415

    # 3 IID devices over 8,000 images hold 2,667 / 2,667 / 2,666 samples; B = 267.
    sizes = (2667, 2666)
    q = [267 / n for n in sizes]
    eps = [[epsilon_for([(1.5, qi, 10 * k)], 1e-5) for k in range(1, 8)] for qi in q]
    fits = 3  # sessions that fit: choose the budget between the 3rd and 4th session
    budget = (max(e[fits - 1] for e in eps) + min(e[fits] for e in eps)) / 2
    exp_path = tmp_path / "budget.toml"
    exp_path.write_text(
        'name = "budget"\n[model]\nname = "dp-cnn-tiny"\n[data.partition]\nkind = "iid"\n'
        "[federation]\nnum_clients = 3\nrounds = 6\n"
        "[training]\nbatch_size = 267\nlearning_rate = 2.0\n"
        f"[privacy]\nenabled = true\nnoise_multiplier = 1.5\nbudget_epsilon = {budget}\n"
        "[simulation]\nnum_cpus = 2\n",
        encoding="utf-8",
    )
    ledgers = tmp_path / "ledgers"
    result = run_experiment(load_experiment(exp_path), ledger_dir=ledgers)
    assert [r.accepted for r in result.rounds] == [3] * fits + [0]
    assert result.rounds[-1].refused == 3
    assert "budget" in result.rounds[-1].problems[0]
    assert result.final is not None
    assert result.final.stopped is not None
    reported = {int(k): v["epsilon"] for k, v in result.final.client_privacy.items()}
    # A restart reads the same spend, and no device went past its budget.
    # One ledger file per device; a restart reads the same spend, none past its budget.
    files = sorted(ledgers.glob("client-*.sqlite"))
    assert len(files) == 3
    spent = []
    for path in files:
        with PrivacyLedger(path) as ledger:
            (subject,) = ledger.subjects()
            assert len(ledger.history(subject)) == fits
            spent.append(ledger.spent(subject, 1e-5))
    spent.sort()
    assert spent == pytest.approx(sorted(reported.values()), rel=1e-12)
    assert max(spent) <= budget


def test_client_level_dp_survives_poison_and_resumes_its_ledger(tmp_path: Path) -> None:
    from tests.integration.poisoned_app import POISONED  # noqa: PLC0415
    from tests.integration.poisoned_app import app as poisoned_app  # noqa: PLC0415

    exp_path = tmp_path / "central.toml"
    exp_path.write_text(
        'name = "central"\n[model]\nname = "fedavg-2nn"\n'
        "[federation]\nnum_clients = 8\nrounds = 2\n"
        "[training]\nbatch_size = 32\nlearning_rate = 0.1\n"
        "[central_privacy]\nenabled = true\nnoise_multiplier = 0.5\nclip_norm = 5.0\n"
        "[simulation]\nnum_cpus = 2\n",
        encoding="utf-8",
    )
    state = tmp_path / "server-privacy.json"
    first = run_experiment(
        load_experiment(exp_path), client_app=poisoned_app, central_state_path=state
    )
    assert first.final is not None
    # q = 1: every poisoned reply is sampled and rejected before clipping (an honest
    # device may diverge on the noisy model and be rejected too); the model stays finite.
    assert all(r.rejected >= len(POISONED) for r in first.rounds)
    assert all(np.isfinite(a).all() for a in first.final.arrays.to_numpy_ndarrays())
    eps = [r.client_epsilon for r in first.rounds]
    assert eps[0] is not None
    assert eps[1] is not None
    assert 0 < eps[0] < eps[1]
    saved = json.loads(state.read_text())
    assert sum(h[2] for h in saved["history"]) == 2
    # A restarted server resumes the accountant: ε keeps growing from where it was.
    second = run_experiment(load_experiment(exp_path), central_state_path=state)
    assert second.rounds[0].client_epsilon is not None
    assert second.rounds[0].client_epsilon > eps[1]
    assert sum(h[2] for h in json.loads(state.read_text())["history"]) == 4


SAMPLED = """
name = "sampled"
seed = 3
[model]
name = "dp-cnn-tiny"
[data.partition]
kind = "dirichlet"
alpha = 0.5
[federation]
num_clients = 20
clients_per_round = 5
rounds = 3
[training]
batch_size = 32
learning_rate = 1.0
[simulation]
num_cpus = 2
"""
DEVICE_DP = "[privacy]\nenabled = true\nnoise_multiplier = 1.0\n"  # fixed-size sampling
CLIENT_DP = "[central_privacy]\nenabled = true\nnoise_multiplier = 0.5\nclip_norm = 5.0\n"


@pytest.mark.slow
@pytest.mark.parametrize("privacy", [DEVICE_DP, CLIENT_DP], ids=["device-dp", "client-dp"])
def test_a_sampled_experiment_gives_the_same_numbers_twice(tmp_path: Path, privacy: str) -> None:
    from edgeai.simulation.outputs import round_json  # noqa: PLC0415

    # Flower's simulation engine gives its nodes new random ids every run: sampling by
    # node id trained other partitions each time. The same seed must give the same run.
    exp_path = tmp_path / "sampled.toml"
    exp_path.write_text(SAMPLED + privacy, encoding="utf-8")
    timing = {"seconds"}
    runs = []
    for _ in range(2):
        result = run_experiment(load_experiment(exp_path))
        lines = [json.loads(round_json(r)) for r in result.rounds]
        runs.append([{k: v for k, v in line.items() if k not in timing} for line in lines])
    first, second = runs
    assert [r["round"] for r in first] == [1, 2, 3]
    if privacy == DEVICE_DP:
        assert all(r["sampled"] == 5 for r in first)
        assert all(r["epsilon"] is not None for r in first)
    else:  # Poisson sampling: q = 0.25, a count that varies from round to round
        assert all(r["client_epsilon"] is not None for r in first)
    assert first == second
