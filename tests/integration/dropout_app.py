"""A ClientApp whose virtual client 0 crashes mid-SecAgg+ (importable for Ray).

Client 0 takes part in SecAgg+'s setup and key sharing, then fails when asked for its
masked vector: the worst moment to drop, since the others' pairwise masks with it must
then be removed with the key shares it left behind.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from edgeai.flower import client_app as honest

app = ClientApp(mods=[honest.secagg_when_asked])
app.query("identify")(honest.identify)
DROPPED = 0  # the partition that crashes


@app.train()
def train(msg: Message, context: Context) -> Message:
    if int(str(context.node_config["partition-id"])) == DROPPED:
        raise RuntimeError("device lost power while training")
    return honest.train(msg, context)
