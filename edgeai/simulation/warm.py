"""Fill the on-disk caches a simulation's workers need, while the engine starts.

Every virtual device needs its data partition and (with a target ε) its
calibrated noise.  Computed once here, in a thread of the driver that runs
while Ray boots and torch imports, the workers' first round only reads them.
Imports nothing heavy: no torch, no Flower.
"""

from __future__ import annotations

import threading

from edgeai.data.datasets import load_dataset
from edgeai.data.partition import cached_partition_indices
from edgeai.flower.experiment import Experiment
from edgeai.privacy.accounting import dp_session

_lock = threading.Lock()
_done: set[str] = set()


def warm_caches(exp: Experiment) -> None:
    """Compute (or find) the partitions and every distinct device's σ for ``exp``."""
    key = exp.model_dump_json()
    with _lock:  # a second caller waits for the first instead of computing again
        if key in _done:
            return
        data = exp.data
        split = load_dataset(data.dataset, data.validation_fraction, data.split_seed)
        parts = cached_partition_indices(split.train.y, exp.federation.num_clients, data.partition)
        if exp.privacy.enabled and exp.privacy.target_epsilon is not None:
            for size in sorted({len(p) for p in parts}):
                dp_session(
                    size,
                    exp.training.batch_size,
                    exp.training.local_epochs,
                    exp.privacy,
                    exp.federation.rounds,
                )
        _done.add(key)


def start_warming(exp: Experiment) -> threading.Thread:
    """Run :func:`warm_caches` in a daemon thread; return it."""
    thread = threading.Thread(target=warm_caches, args=(exp,), name="edgeai-warm", daemon=True)
    thread.start()
    return thread
