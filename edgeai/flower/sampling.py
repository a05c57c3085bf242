"""Which nodes train in a round, and in which order their replies are summed.

The same seed must give the same run. Flower's ``FedAvg`` samples with
``random.sample(all_nodes, sample_size)`` over ``grid.get_node_ids()``
(``flwr/serverapp/strategy/strategy_utils.py``, ``sample_nodes``), and node ids are
random: the Simulation Engine registers every virtual node under a fresh random id on
each run (``flwr/server/superlink/fleet/vce/vce_api.py``, ``_register_nodes``), and the
in-memory link state returns them as a ``set``. Sampling by node id, even with a seeded
``random``, therefore trains other partitions every run, and replies summed in arrival
order differ in the last float bits.

So we sample over a *stable key* per node instead, sorted, with an RNG seeded by
(experiment seed, round), and map the chosen keys back to node ids:

- a simulated node's key is its ``partition-id`` (from its node config, asked once with
  an ``identify`` query, see :data:`IDENTIFY`);
- a deployed node's key is its node id, which is stable: it comes with the node's
  enrolled key pair and the SuperLink keeps it in its database.

Replies are aggregated in key order, so floating-point sums are reproducible too.
The functions here are pure; :class:`NodeDirectory` is the one stateful cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from numpy.typing import NDArray

# The query a ClientApp answers with its identity (``@app.query("identify")``).
IDENTIFY = "query.identify"
IDENTITY_KEY = "identity"

# (kind, number, name): partition ids first (numerically), then node names, then node ids.
NodeKey = tuple[int, int, str]


def key_of(identity: Mapping[str, object], node_id: int) -> NodeKey:
    """A node's sort key from what it says of itself (its node id if it says nothing)."""
    if "partition-id" in identity:
        return (0, int(str(identity["partition-id"])), "")
    if "node-name" in identity:
        return (1, 0, str(identity["node-name"]))
    return (2, node_id, "")


def identity_of(node_config: Mapping[str, object]) -> dict[str, int | str]:
    """What a node says of itself when asked: its partition id or its name, if it has one."""
    if "partition-id" in node_config:
        return {"partition-id": int(str(node_config["partition-id"]))}
    if "node-name" in node_config:
        return {"node-name": str(node_config["node-name"])}
    return {}


def in_key_order(node_keys: Mapping[int, NodeKey]) -> list[int]:
    """The node ids of ``node_keys``, sorted by key (then by id: keys should be unique)."""
    return sorted(node_keys, key=lambda n: (node_keys[n], n))


def round_draws(seed: int, server_round: int, n: int) -> NDArray[np.float64]:
    """``n`` uniform draws in [0, 1) that depend only on (``seed``, ``server_round``)."""
    return np.random.default_rng([seed % 2**63, server_round]).random(n)


def sample_fixed(
    node_keys: Mapping[int, NodeKey], size: int, seed: int, server_round: int
) -> list[int]:
    """``size`` nodes uniformly without replacement, in key order; all of them if fewer."""
    nodes = in_key_order(node_keys)
    if size >= len(nodes):
        return nodes
    # The `size` smallest of i.i.d. uniform draws: a uniform subset of that size.
    chosen = np.argsort(round_draws(seed, server_round, len(nodes)), kind="stable")[:size]
    return [nodes[i] for i in sorted(int(i) for i in chosen)]


def sample_poisson(
    node_keys: Mapping[int, NodeKey], rate: float, seed: int, server_round: int
) -> list[int]:
    """Each node independently with probability ``rate`` (client-level DP's sampling)."""
    nodes = in_key_order(node_keys)
    draws = round_draws(seed, server_round, len(nodes))
    return [n for n, d in zip(nodes, draws, strict=True) if d < rate]


def replies_in_order(replies: Iterable[Message], node_keys: Mapping[int, NodeKey]) -> list[Message]:
    """``replies`` sorted by their sender's key, whatever order they arrived in."""

    def order(msg: Message) -> tuple[NodeKey, int]:
        src = msg.metadata.src_node_id
        return node_keys.get(src, (3, src, "")), src

    return sorted(replies, key=order)


Ask = Callable[[Sequence[Message]], Sequence[Message]]


class NodeDirectory:
    """The sort key of every node seen: asked once per node with ``ask``, then cached.

    Without ``ask`` (a deployed run) a node's key is its node id. A node that answers
    the query with an error (a ClientApp without the ``identify`` query) keeps its node
    id as key; one that does not answer in time is asked again the next round.
    """

    def __init__(self, ask: Ask | None = None) -> None:
        self.ask = ask
        self.keys: dict[int, NodeKey] = {}

    def keys_of(self, node_ids: Iterable[int]) -> dict[int, NodeKey]:
        """The key of each of ``node_ids``, asking the nodes not yet known."""
        nodes = sorted(set(node_ids))
        unknown = [n for n in nodes if n not in self.keys]
        if unknown and self.ask is not None:
            query = RecordDict({IDENTITY_KEY: ConfigRecord({})})
            messages = [Message(query, dst_node_id=n, message_type=IDENTIFY) for n in unknown]
            for reply in self.ask(messages):
                src = reply.metadata.src_node_id
                said: Mapping[str, object] = {}
                if not reply.has_error() and IDENTITY_KEY in reply.content.config_records:
                    said = reply.content.config_records[IDENTITY_KEY]
                self.keys[src] = key_of(said, src)
        elif self.ask is None:
            self.keys.update((n, key_of({}, n)) for n in unknown)
        return {n: self.keys.get(n, key_of({}, n)) for n in nodes}
