"""A ClientApp whose first virtual clients send poisoned replies (importable for Ray)."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from edgeai.fl import client_app as honest

app = ClientApp()
POISONED = {0: "nan", 1: "shape", 2: "zero-examples", 3: "inf", 4: "absurd-examples"}


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = honest.train(msg, context)
    kind = POISONED.get(int(context.node_config["partition-id"]))
    if kind is None:
        return reply
    state = reply.content.array_records["arrays"].to_torch_state_dict()
    metrics = dict(reply.content.metric_records["metrics"])
    first = next(iter(state))
    if kind == "nan":
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
