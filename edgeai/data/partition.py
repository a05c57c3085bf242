"""Split a training set over clients with flwr-datasets partitioners."""

from __future__ import annotations

import hashlib
import io
from typing import Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import Field, model_validator

from edgeai.cache import cache_dir, key_of
from edgeai.configfile import Frozen
from edgeai.errors import ConfigError
from edgeai.plumbing.files import atomic_write

PartitionKind = Literal["iid", "dirichlet", "labels"]


class PartitionSpec(Frozen):
    """How a training set is split over ``num_partitions`` clients.

    ``iid``: equal random shards.  ``dirichlet``: label proportions per client
    drawn from Dirichlet(``alpha``).  ``labels``: each client holds only
    ``labels_per_client`` classes (the FedAvg paper's pathological non-IID).
    """

    kind: PartitionKind = "iid"
    alpha: float = Field(default=0.5, gt=0)
    labels_per_client: int = Field(default=2, ge=1)
    min_partition_size: int = Field(default=10, ge=0)
    seed: int = 42

    @model_validator(mode="after")
    def _check(self) -> PartitionSpec:
        if self.kind != "dirichlet" and "alpha" in self.model_fields_set:
            raise ConfigError("alpha applies only to kind = 'dirichlet'")
        if self.kind != "labels" and "labels_per_client" in self.model_fields_set:
            raise ConfigError("labels_per_client applies only to kind = 'labels'")
        return self


def check_partitionable(
    labels: NDArray[np.int64], num_partitions: int, spec: PartitionSpec
) -> None:
    """Raise :class:`ConfigError` when ``labels`` cannot be split as asked (cheap: no split).

    Run before a simulation starts, so a fleet larger than the data fails in a line,
    not in every Ray worker.
    """
    if num_partitions < 1:
        raise ConfigError(f"num_partitions must be >= 1; got {num_partitions}")
    if num_partitions > len(labels):
        raise ConfigError(
            f"{num_partitions} clients but only {len(labels)} training samples; "
            f"use at most {len(labels)} clients (federation.num_clients) or more data"
        )
    num_classes = len(np.unique(labels))
    if spec.kind == "labels" and spec.labels_per_client > num_classes:
        raise ConfigError(
            f"labels_per_client = {spec.labels_per_client} but the data has {num_classes} classes"
        )


def partition_indices(
    labels: NDArray[np.int64], num_partitions: int, spec: PartitionSpec
) -> list[NDArray[np.int64]]:
    """Return, for each client, the indices of its samples in ``labels``.

    Every index appears in at most one partition.
    """
    from datasets import Dataset  # noqa: PLC0415  (train extra only; slow import)
    from flwr_datasets.partitioner import (  # noqa: PLC0415
        DirichletPartitioner,
        IidPartitioner,
        Partitioner,
        PathologicalPartitioner,
    )

    check_partitionable(labels, num_partitions, spec)
    order = np.arange(len(labels))
    if spec.kind == "iid":
        # IidPartitioner takes contiguous shards: shuffle first so the shards are random.
        order = np.random.default_rng(spec.seed).permutation(len(labels))
        partitioner: Partitioner = IidPartitioner(num_partitions)
    elif spec.kind == "dirichlet":
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=spec.alpha,
            min_partition_size=min(spec.min_partition_size, len(labels) // num_partitions),
            self_balancing=False,
            seed=spec.seed,
        )
    else:
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=spec.labels_per_client,
            class_assignment_mode="first-deterministic",
            seed=spec.seed,
        )
    partitioner.dataset = Dataset.from_dict(
        {"label": labels[order].tolist(), "idx": order.tolist()}
    )
    try:
        return [
            np.sort(np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64))
            for i in range(num_partitions)
        ]
    except ValueError as exc:
        raise ConfigError(f"cannot partition the data as {spec.model_dump()}: {exc}") from exc


def cached_partition_indices(
    labels: NDArray[np.int64], num_partitions: int, spec: PartitionSpec
) -> list[NDArray[np.int64]]:
    """:func:`partition_indices`, memoised on disk by a hash of its inputs.

    Every simulated client needs the same partition; computing it once (and
    letting the simulation driver compute it while Ray starts) keeps the slow
    ``datasets`` import off each worker's first round.
    """
    labels_digest = hashlib.sha256(np.ascontiguousarray(labels).tobytes()).hexdigest()
    path = (
        cache_dir("partitions") / f"{key_of(labels_digest, num_partitions, spec.model_dump())}.npz"
    )
    try:
        with np.load(path, allow_pickle=False) as data:
            sizes, flat = data["sizes"], data["indices"]
        return [part.astype(np.int64) for part in np.split(flat, np.cumsum(sizes)[:-1])]
    except (OSError, KeyError, ValueError):
        pass  # not cached yet, or a torn file: recompute
    parts = partition_indices(labels, num_partitions, spec)
    buffer = io.BytesIO()
    np.savez(buffer, sizes=np.array([len(p) for p in parts]), indices=np.concatenate(parts))
    atomic_write(path, buffer.getvalue(), durable=False)  # a cache: recomputed if lost
    return parts
