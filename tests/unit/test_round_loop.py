"""The one round loop, wired as the deployed ServerApp wires it, over an in-memory grid.

The grid's nodes answer every train message at once: with the model they got (they
learn nothing) or with the ClientApp's budget-exhausted error. What is checked is the
loop and its sinks: checkpoints the release proposal can read, ``rounds.jsonl``,
``status.json``, resume after a checkpoint, and the one way a run stops.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from uuid import uuid4

import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from edgeai.flower.client_app import BUDGET_EXHAUSTED
from edgeai.flower.experiment import Experiment
from edgeai.flower.runspec import RunPaths, RunSpec, read_status
from edgeai.flower.server_app import run_deployed
from edgeai.models.checkpoint import RUN_ID_KEY, load_checkpoint


@pytest.fixture(autouse=True)
def _server_app_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Flower stamps every Message with the run, node and task of its process (set by Flower
    # when it starts a ServerApp).
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class MemoryGrid:
    """Nodes that reply to every message as soon as it is pushed."""

    def __init__(self, nodes: int, refuse: bool = False) -> None:
        self.nodes = list(range(1, nodes + 1))
        self.refuse = refuse
        self.pushed = 0
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.nodes)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do
            self._replies[msg.metadata.message_id] = self._answer(msg)
            ids.append(msg.metadata.message_id)
        self.pushed += len(ids)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def _answer(self, msg: Message) -> Message:
        if self.refuse:
            return Message(Error(BUDGET_EXHAUSTED, "budget spent"), reply_to=msg)
        arrays = next(iter(msg.content.array_records.values()))
        metrics = MetricRecord({"num-examples": 10, "train-loss": 1.0})
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def _spec(out: Path, rounds: int) -> RunSpec:
    exp = Experiment.model_validate(
        {
            "name": "loop",
            "model": {"name": "dp-cnn-tiny"},
            "federation": {"num_clients": 3, "rounds": rounds},
        }
    )
    return RunSpec(experiment=exp, out_dir=out, node_wait_s=1, reply_poll_s=0.01)


def _rounds(paths: RunPaths) -> list[dict[str, object]]:
    return [json.loads(line) for line in paths.rounds.read_text().splitlines()]


def test_a_deployed_run_checkpoints_every_round_and_resumes_after_the_last(tmp_path: Path):
    paths = RunPaths(tmp_path)
    final = run_deployed(MemoryGrid(3), _spec(tmp_path, rounds=2), 7)  # type: ignore[arg-type]
    assert (final.stopped, final.first_round, final.round) == (None, 1, 2)
    rounds = _rounds(paths)
    assert [(r["round"], r["accepted"], r["run_id"], r["missing"]) for r in rounds] == [
        (1, 3, 7, 0),
        (2, 3, 7, 0),
    ]
    for line, path in zip(rounds, paths.checkpoint_files(), strict=True):
        ckpt = load_checkpoint(path)
        # The accuracy the release gate reads is the one the round measured.
        assert ckpt.accuracy() == pytest.approx(line["accuracy"])
        assert ckpt.accuracy() > 0.0
        assert (ckpt.round, ckpt.provenance[RUN_ID_KEY]) == (line["round"], 7)
    status = read_status(paths) or {}
    assert (status["state"], status["round"], status["first_round"]) == ("finished", 2, 1)

    grid = MemoryGrid(3)
    final = run_deployed(grid, _spec(tmp_path, rounds=3), 8)  # type: ignore[arg-type]
    assert (final.first_round, final.round, grid.pushed) == (3, 3, 3)  # round 3 only
    assert [r["round"] for r in _rounds(paths)] == [1, 2, 3]
    status = read_status(paths) or {}
    assert (status["state"], status["first_round"], status["run_id"]) == ("finished", 3, 8)


def test_a_round_every_device_refuses_stops_the_run_with_the_reason(tmp_path: Path):
    paths = RunPaths(tmp_path)
    final = run_deployed(MemoryGrid(3, refuse=True), _spec(tmp_path, 3), 1)  # type: ignore[arg-type]
    assert (
        final.stopped == "stopped after round 1: every sampled device's privacy budget is exhausted"
    )
    assert [(r["round"], r["refused"]) for r in _rounds(paths)] == [(1, 3)]
    status = read_status(paths) or {}
    assert (status["state"], status["round"], status["reason"]) == ("stopped", 1, final.stopped)
