"""Run an experiment's round loop and ClientApp in this one process, without Ray.

The grids of issue 12 are 66 + 6 runs; on the shared 2-core machine every
``edgeai simulate`` spends 30-50 s starting Ray and its actors before round 1, more
than a whole 20-round run of the small models takes. This driver runs the very same
code — :class:`edgeai.flower.loop.RoundLoop`, the strategies, reply validation, the
ClientApp's ``train`` and ``identify`` handlers, the attacks — with the grid's messages
answered in-process, one client after the other. Only the transport differs from
``edgeai simulate`` (and nothing of the transport enters the numbers: same seed, same
sampling, same reply order). ``python simulations/robustness/inline.py EXP.toml OUT``
runs one experiment and writes ``OUT/metrics.jsonl`` and ``OUT/summary.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from edgeai.flower import client_app
from edgeai.flower.experiment import Experiment, load_experiment
from edgeai.flower.loop import RoundLoop, RoundOutcome, RoundSink, ServerPlan, Start
from edgeai.flower.records import FinalState, RoundRecord
from edgeai.flower.sampling import IDENTIFY
from edgeai.flower.server_app import client_plan


class InlineGrid:
    """``num_clients`` virtual nodes that answer each message as it is pushed."""

    def __init__(self, num_clients: int) -> None:
        self.contexts = {
            node: Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": node - 1, "num-partitions": num_clients},
                state=RecordDict(),
                run_config={},
            )
            for node in range(1, num_clients + 1)
        }
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> Iterable[int]:  # noqa: D102
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())  # as Flower's grids do
            ctx = self.contexts[msg.metadata.dst_node_id]
            handler = client_app.identify if msg.metadata.message_type == IDENTIFY else None
            reply = (handler or client_app.train)(msg, ctx)
            reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]


class _Keep(RoundSink):
    def __init__(self) -> None:
        self.rounds: list[RoundRecord] = []
        self.final: FinalState | None = None

    def round_done(self, outcome: RoundOutcome) -> None:
        self.rounds.append(outcome.record)

    def run_ended(self, final: FinalState) -> None:
        self.final = final


def run_inline(exp: Experiment) -> list[RoundRecord]:
    """Train ``exp`` as ``edgeai simulate`` would, in this process; the round records."""
    # Flower stamps each Message with its process's run, node and task (a ServerApp's).
    TaskIdentity._run_id = 1
    TaskIdentity._node_id = SUPERLINK_NODE_ID
    TaskIdentity._task_id = 1
    plan, n_train = client_plan(exp)
    server = ServerPlan(
        client=plan,
        num_clients=exp.federation.num_clients,
        clients_per_round=exp.federation.per_round,
        max_examples=n_train,
        central=exp.central_privacy,
        identify_nodes=True,
        reply_poll_s=0.0,
    )
    keep = _Keep()
    RoundLoop(server, Start(seed=plan.seed), [keep]).run(
        InlineGrid(exp.federation.num_clients)  # type: ignore[arg-type]
    )
    return keep.rounds


def write(exp: Experiment, rounds: list[RoundRecord], out: Path, seconds: float) -> None:
    """``metrics.jsonl`` and a short ``summary.json`` (accuracy, config echo) in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "metrics.jsonl").open("w", encoding="utf-8") as fh:
        for r in rounds:
            fh.write(json.dumps(asdict(r), default=list) + "\n")
    summary: dict[str, Any] = {
        "experiment": exp.name,
        "rounds": len(rounds),
        "accuracy": rounds[-1].accuracy if rounds else None,
        "seconds": seconds,
        "backend": "inline (simulations/robustness/inline.py)",
        "config": exp.model_dump(mode="json", exclude_unset=True),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


def main(argv: list[str]) -> None:
    """``inline.py EXP.toml OUT``: run one experiment in-process."""
    exp = load_experiment(Path(argv[0]))
    t0 = time.perf_counter()
    rounds = run_inline(exp)
    write(exp, rounds, Path(argv[1]), time.perf_counter() - t0)
    print(f"{exp.name}: {rounds[-1].accuracy} after {len(rounds)} rounds")


if __name__ == "__main__":
    main(sys.argv[1:])
