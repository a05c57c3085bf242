"""Fill the on-disk caches a simulation's workers need, while the engine starts.

Every virtual device needs its data partition and (with a target ε) its
calibrated noise.  Computed once here, in a thread of the driver that runs
while Ray boots and torch imports, the workers' first round only reads them.
Imports no Flower; the task (and torch) is already loaded by the experiment's check.
"""

from __future__ import annotations

import threading

from edgeai.flower.experiment import Experiment
from edgeai.flower.tasks import load_config, partitions, task_datasets
from edgeai.privacy.accounting import dp_session

_lock = threading.Lock()
_done: set[str] = set()


def warm_caches(exp: Experiment) -> None:
    """Compute (or find) the partitions and every distinct device's σ for ``exp``."""
    key = exp.model_dump_json()
    with _lock:  # a second caller waits for the first instead of computing again
        if key in _done:
            return
        spec = exp.data.partition
        train, _ = task_datasets(exp.task_config)
        task = load_config(exp.task_config)
        parts = partitions(task, train, exp.federation.num_clients, spec, spec.seed)
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
