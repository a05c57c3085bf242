"""Data sets and their partitions over (virtual) devices."""

from edgeai.data.datasets import (
    BUILTIN_DATASETS,
    ArrayDataset,
    Split,
    load_dataset,
    load_npz,
    to_model_input,
)
from edgeai.data.partition import PartitionSpec, cached_partition_indices, partition_indices

__all__ = [
    "BUILTIN_DATASETS",
    "ArrayDataset",
    "PartitionSpec",
    "Split",
    "cached_partition_indices",
    "load_dataset",
    "load_npz",
    "partition_indices",
    "to_model_input",
]
