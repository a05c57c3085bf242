"""The vmap backend trains each client exactly as the ClientApp does (to float rounding)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from edgeai.flower.attacks import AttackPlan
from edgeai.flower.client_app import BUDGET_EXHAUSTED, device_of, local_train, plan_config
from edgeai.flower.experiment import Experiment
from edgeai.flower.plan import ClientPlan
from edgeai.flower.tasks import build_seeded, load_config
from edgeai.simulation.batched import clipped_sum
from edgeai.simulation.runner import client_plan
from edgeai.simulation.vmap import FIRST_NODE_ID, VmapGrid

CLIENTS = 10


def experiment(model: str, **extra: object) -> Experiment:
    raw: dict[str, object] = {
        "name": "vmap-unit",
        "seed": 3,
        "model": {"name": model},
        "data": {"partition": {"kind": "dirichlet", "alpha": 0.5}},
        "federation": {"num_clients": CLIENTS, "rounds": 4},
        "training": {"batch_size": 32, "learning_rate": 0.1, "momentum": 0.5, "weight_decay": 1e-3},
        **extra,
    }
    return Experiment.model_validate(raw)


def messages(
    plan: ClientPlan, state: dict[str, torch.Tensor], rnd: int, parts: list[int]
) -> list[Message]:
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    config = plan_config(plan)
    config["server-round"] = rnd
    content = RecordDict({"arrays": ArrayRecord(state), "config": config})
    return [
        Message(content, dst_node_id=FIRST_NODE_ID + p, message_type=MessageType.TRAIN)
        for p in parts
    ]


def both_ways(
    exp: Experiment, tmp_path: Path, parts: list[int]
) -> tuple[list[Message], list[tuple[dict[str, torch.Tensor], dict[str, int | float]]]]:
    plan, _ = client_plan(exp)
    model = build_seeded(load_config(plan.task), 0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    grid = VmapGrid(CLIENTS)
    vplan = plan.model_copy(update={"ledger_dir": str(tmp_path / "vmap")})
    sent = messages(vplan, state, 2, parts)
    ids = list(grid.push_messages(sent))
    replies = list(grid.pull_messages(ids))
    splan = plan.model_copy(update={"ledger_dir": str(tmp_path / "seq")})
    (tmp_path / "vmap").mkdir(exist_ok=True)
    (tmp_path / "seq").mkdir(exist_ok=True)
    reference = []
    for p in parts:
        node = {"partition-id": p, "num-partitions": CLIENTS}
        reference.append(local_train(splan, state, node, 2, device_of(splan, node, p, 0)))
    return replies, reference


def compare(
    replies: list[Message],
    reference: list[tuple[dict[str, torch.Tensor], dict[str, int | float]]],
    atol: float,
) -> None:
    assert len(replies) == len(reference)
    for reply, (state, metrics) in zip(replies, reference, strict=True):
        assert not reply.has_error()
        got = reply.content.array_records["arrays"].to_torch_state_dict()
        for name, value in state.items():
            torch.testing.assert_close(got[name], value, atol=atol, rtol=1e-4)
        ours = reply.content.metric_records["metrics"]
        assert ours["num-examples"] == metrics["num-examples"]
        assert ours["steps"] == metrics["steps"]
        assert ours["train-loss"] == pytest.approx(metrics["train-loss"], rel=1e-4)
        for key in ("epsilon", "noise-multiplier", "sample-rate", "dp-steps"):
            if key in metrics:
                assert ours[key] == pytest.approx(metrics[key], rel=1e-9), key


def test_plain_sgd_with_momentum_matches_the_client_app(tmp_path: Path) -> None:
    # A tanh model: with ReLU a unit whose input sits at 0 within float rounding can take
    # the other branch when clients are batched (bmm rounds unlike mm), and the two
    # trajectories then part by more than rounding (in float64 they agree to 1e-16).
    replies, reference = both_ways(experiment("dp-cnn-tiny"), tmp_path, [0, 3, 7])
    compare(replies, reference, atol=1e-5)


def test_dp_sgd_matches_opacus_batches_noise_and_epsilon(tmp_path: Path) -> None:
    privacy = {"enabled": True, "noise_multiplier": 1.1, "max_grad_norm": 0.5}
    exp = experiment("dp-cnn-tiny", privacy=privacy)
    replies, reference = both_ways(exp, tmp_path, [1, 4, 9])
    compare(replies, reference, atol=1e-4)


def test_fedprox_and_a_label_flipper_match_the_client_app(tmp_path: Path) -> None:
    exp = experiment(
        "dp-cnn-tiny",
        strategy={"name": "fedprox", "proximal_mu": 0.5},
        attack={"kind": "label-flip", "fraction": 0.5},
    )
    plan, _ = client_plan(exp)
    assert plan.strategy.mu == 0.5
    flippers = AttackPlan.of(plan.attack, CLIENTS, plan.seed)
    assert 0 < sum(flippers.attacks(p) for p in (0, 1, 2, 3)) < 4  # honest and hostile both
    replies, reference = both_ways(exp, tmp_path, [0, 1, 2, 3])
    compare(replies, reference, atol=1e-5)


def test_a_sign_flipper_under_dp_sgd_matches_the_client_app(tmp_path: Path) -> None:
    privacy = {"enabled": True, "noise_multiplier": 0.8, "max_grad_norm": 0.5}
    exp = experiment("dp-cnn-tiny", privacy=privacy, attack={"kind": "sign-flip", "fraction": 0.5})
    plan, _ = client_plan(exp)
    assert any(AttackPlan.of(plan.attack, CLIENTS, plan.seed).attacks(p) for p in (0, 1, 2, 3))
    replies, reference = both_ways(exp, tmp_path, [0, 1, 2, 3])
    compare(replies, reference, atol=1e-4)


def test_a_device_past_its_budget_refuses(tmp_path: Path) -> None:
    privacy = {"enabled": True, "noise_multiplier": 0.5, "budget_epsilon": 0.01}
    plan, _ = client_plan(experiment("dp-cnn-tiny", privacy=privacy))
    plan = plan.model_copy(update={"ledger_dir": str(tmp_path)})
    state = build_seeded(load_config(plan.task), 0).state_dict()
    grid = VmapGrid(CLIENTS)
    replies = list(grid.send_and_receive(messages(plan, state, 1, [2, 5])))
    assert [r.has_error() for r in replies] == [True, True]
    assert {r.error.code for r in replies} == {BUDGET_EXHAUSTED}
    assert "exhausted" in replies[0].error.reason


def test_one_clipped_sum_equals_opacus_on_the_same_batch() -> None:
    from opacus import PrivacyEngine  # noqa: PLC0415
    from torch.func import functional_call, grad, vmap  # noqa: PLC0415
    from torch.utils.data import DataLoader, TensorDataset  # noqa: PLC0415

    task = load_config(experiment("dp-cnn-tiny").task_config)
    model = build_seeded(task, 1)
    fresh = build_seeded(task, 1)  # the same weights, without Opacus' hooks
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(24, 1, 28, 28, generator=gen), torch.randint(0, 10, (24,), generator=gen)
    clip = 0.05  # small: most samples are clipped, some not

    loader = DataLoader(TensorDataset(x, y), batch_size=24)
    dp_model, opt, dp_loader = PrivacyEngine().make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=loader,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        poisson_sampling=False,
    )
    xb, yb = next(iter(dp_loader))
    task.loss(dp_model(xb), yb).backward()
    opt.clip_and_accumulate()
    expected = {n: p.summed_grad for n, p in dp_model._module.named_parameters()}

    params = {n: p.detach().clone() for n, p in fresh.named_parameters()}
    buffers = dict(fresh.named_buffers())

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return task.loss(functional_call(fresh, ({**p, **buffers},), (xi[None],)), yi[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    stacked = {n: g.unsqueeze(0) for n, g in per_sample.items()}
    got = clipped_sum(stacked, torch.ones(1, 24), torch.tensor([clip]))
    for name, value in expected.items():
        torch.testing.assert_close(got[name][0], value, atol=1e-6, rtol=1e-4)
