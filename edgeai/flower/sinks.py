"""Round sinks that write files: a checkpoint per round, and one JSON line per round.

The checkpoint's provenance is :meth:`RoundRecord.provenance
<edgeai.flower.records.RoundRecord.provenance>`, under the keys of
:mod:`edgeai.models.checkpoint`; the release proposal reads the accuracy back with
:meth:`Checkpoint.accuracy <edgeai.models.checkpoint.Checkpoint.accuracy>`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

from edgeai.flower.loop import RoundOutcome, RoundSink
from edgeai.flower.plan import ClientPlan
from edgeai.flower.tasks import checkpoint_identity, load_config
from edgeai.models.checkpoint import (
    TASK_CONFIG_KEY,
    TASK_KEY,
    TASK_VERSION_KEY,
    checkpoint_from_state,
    save_checkpoint,
)


def task_provenance(plan: ClientPlan) -> dict[str, object]:
    """What a checkpoint or an exported model records about its task."""
    return {
        TASK_KEY: plan.task_name,
        TASK_VERSION_KEY: plan.task_version,
        TASK_CONFIG_KEY: plan.task.model_dump_json(exclude_defaults=True),
    }


class CheckpointSink(RoundSink):
    """Saves the global model of every round as an edgeai checkpoint.

    Parameters
    ----------
    plan
        The run's client plan (its task names the model, input shape and outputs).
    path_of
        ``path_of(round)``: where the checkpoint of that round goes.
    provenance
        Recorded beside the round's own numbers (e.g. the run's id).
    """

    def __init__(
        self,
        plan: ClientPlan,
        path_of: Callable[[int], Path],
        provenance: Mapping[str, object] | None = None,
    ) -> None:
        self.plan = plan
        self.path_of = path_of
        self.provenance = {**task_provenance(plan), **(provenance or {})}
        self.identity = checkpoint_identity(load_config(plan.task))

    def round_done(self, outcome: RoundOutcome) -> None:
        """Write the round's checkpoint (atomically)."""
        record = outcome.record
        ckpt = checkpoint_from_state(
            *self.identity,
            {k: v.numpy() for k, v in outcome.arrays.items()},
            round_=record.round,
            provenance={**self.provenance, **record.provenance()},
        )
        save_checkpoint(ckpt, self.path_of(record.round))


class RoundLogSink(RoundSink):
    """Appends one JSON line per round: the record, then ``extra``, then how the round went."""

    def __init__(self, path: Path, extra: Mapping[str, object] | None = None) -> None:
        self.path = path
        self.extra = dict(extra or {})

    def round_done(self, outcome: RoundOutcome) -> None:
        """Append the round's line."""
        line = {
            **asdict(outcome.record),
            **self.extra,
            "missing": outcome.missing,
            "wait_s": outcome.wait_s,
            **outcome.timing,
        }
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
