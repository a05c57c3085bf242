"""The smallest Flower app on the simulation engine: the reference for start-up cost."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

client = ClientApp()


@client.train()
def train(msg: Message, _context: Context) -> Message:
    arrays = msg.content.array_records["arrays"]
    return Message(
        RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}),
        reply_to=msg,
    )


def run(clients: int, rounds: int, on_round: Callable[[], None]) -> None:
    server = ServerApp()

    @server.main()
    def main(grid: Grid, _context: Context) -> None:
        strategy = FedAvg(fraction_evaluate=0.0, min_available_nodes=clients)
        initial = ArrayRecord([np.zeros(26010, np.float32)])

        def evaluate(rnd: int, _arrays: ArrayRecord) -> MetricRecord:
            if rnd > 0:
                on_round()
            return MetricRecord({})

        strategy.start(grid, initial, num_rounds=rounds, evaluate_fn=evaluate)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=clients,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
