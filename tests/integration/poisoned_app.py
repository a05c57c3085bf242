"""A ClientApp whose first virtual clients send poisoned replies (importable for Ray).

The kind of poison comes from the node config: ``poison`` (comma-separated kinds, one per
round in turn — a deployed node) or else ``partition-id`` (a simulated client). Kinds
``scale`` and ``sign-flip`` send a well-formed hostile update (:mod:`edgeai.flower.attacks`).
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgeai.flower import client_app as honest
from edgeai.flower.attacks import DEFAULT_FACTOR, scaled_update

app = ClientApp()
app.query("identify")(honest.identify)  # sampled and aggregated by partition id
POISONED = {0: "nan", 1: "shape", 2: "zero-examples", 3: "inf", 4: "absurd-examples"}


def _kind(msg: Message, context: Context) -> str | None:
    if "poison" in context.node_config:
        kinds = str(context.node_config["poison"]).split(",")
        server_round = int(str(msg.content.config_records["config"].get("server-round", 1)))
        return kinds[(server_round - 1) % len(kinds)]
    return POISONED.get(int(str(context.node_config["partition-id"])))


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    kind = _kind(msg, context)
    if kind is None:
        return reply
    state = reply.content.array_records["arrays"].to_torch_state_dict()
    metrics = dict(reply.content.metric_records["metrics"])
    first = next(iter(state))
    if kind in DEFAULT_FACTOR:  # well-formed but hostile: passes validation (issue 12)
        factor = DEFAULT_FACTOR[kind] * (-1 if kind == "sign-flip" else 1)
        sent = scaled_update(
            {k: v.numpy() for k, v in msg.content.array_records["arrays"].items()},
            {k: v.numpy() for k, v in state.items()},
            factor,
        )
        state = {k: torch.from_numpy(v) for k, v in sent.items()}
    elif kind == "nan":
        state[first] = torch.full_like(state[first], float("nan"))
    elif kind == "inf":
        state[first][..., 0] = float("inf")
    elif kind == "shape":
        state[first] = torch.zeros(3)
    elif kind == "zero-examples":
        metrics["num-examples"] = 0
    else:
        metrics["num-examples"] = 10**9
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
