from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeai.data import (
    PartitionSpec,
    cached_partition_indices,
    load_dataset,
    load_npz,
    partition_indices,
    to_model_input,
)
from edgeai.errors import ConfigError, DataError, UnknownNameError


def test_uint8_images_become_unit_floats_with_a_channel_axis() -> None:
    x = np.array([[[0, 255], [128, 1]]], dtype=np.uint8)
    out = to_model_input(x)
    assert out.shape == (1, 1, 2, 2)
    assert out.dtype == np.float32
    assert out.min() == 0.0
    assert out.max() == 1.0


def test_float_images_outside_unit_range_are_refused() -> None:
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        to_model_input(np.full((2, 4, 4), 3.0, dtype=np.float32))


def test_integer_samples_are_token_ids_and_other_kinds_are_refused() -> None:
    tokens = to_model_input(np.ones((2, 3), dtype=np.int32))
    assert (tokens.dtype, tokens.shape) == (np.int64, (2, 3))  # no channel axis, no scaling
    with pytest.raises(DataError, match="uint8, float or integer token ids"):
        to_model_input(np.zeros((2, 3, 3), dtype=np.complex64))


def test_npz_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros((5, 8, 8), dtype=np.uint8), y=np.arange(5))
    x, y = load_npz(path)
    assert x.shape == (5, 1, 8, 8)
    assert y.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"X": np.zeros((3, 4, 4), np.uint8)}, "missing array"),
        ({"X": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(3, np.float32)}, "integer labels"),
        ({"X": np.full((3, 4, 4), 2.0, np.float32), "y": np.zeros(3, np.int64)}, r"\[0, 1\]"),
        ({"X": np.full((3, 4), np.nan, np.float32), "y": np.zeros(3, np.int64)}, "finite"),
        ({"X": -np.ones((3, 4), np.int32), "y": np.zeros(3, np.int64)}, "token ids"),
        ({"X": np.zeros((3, 4, 4), np.uint8), "y": np.zeros(4, np.int64)}, "one label per sample"),
        ({"X": np.zeros((3, 4, 4), np.uint8), "y": -np.ones(3, np.int64)}, ">= 0"),
    ],
)
def test_bad_npz_files_are_named_and_explained(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not an \.npz file"):
        load_npz(junk)


def test_mnist_split_is_deterministic_disjoint_and_complete() -> None:
    a = load_dataset("mnist", 0.2, seed=0)
    load_dataset.cache_clear()  # recompute: determinism, not memoisation
    b = load_dataset("mnist", 0.2, seed=0)
    assert a is not b
    assert len(a.train) == 8000
    assert len(a.validation) == 2000
    assert a.train.input_shape == (1, 28, 28)
    assert a.train.num_classes == 10
    assert np.array_equal(a.validation.y, b.validation.y)
    assert np.array_equal(a.train.x[:50], b.train.x[:50])
    # the 10k images are distinct enough that no validation image is also a training image
    train_keys = {row.tobytes() for row in (a.train.x * 255).astype(np.uint8)}
    assert not any(row.tobytes() in train_keys for row in (a.validation.x * 255).astype(np.uint8))


def test_digits_is_built_in() -> None:
    split = load_dataset("digits")
    assert split.train.input_shape == (1, 8, 8)
    assert 0.0 <= split.train.x.min() <= split.train.x.max() <= 1.0
    assert len(split.train) + len(split.validation) == 1797


def test_unknown_data_set_lists_choices() -> None:
    with pytest.raises(UnknownNameError, match="mnist"):
        load_dataset("cifar10")


@settings(max_examples=15, deadline=None)
@given(
    n_clients=st.integers(1, 40),
    seed=st.integers(0, 10_000),
    kind=st.sampled_from(["iid", "dirichlet", "labels"]),
)
def test_partitions_are_disjoint_and_within_range(n_clients: int, seed: int, kind: str) -> None:
    labels = np.random.default_rng(seed).integers(0, 10, size=600).astype(np.int64)
    spec = PartitionSpec.model_validate({"kind": kind, "seed": seed, "min_partition_size": 0})
    parts = partition_indices(labels, n_clients, spec)
    flat = np.concatenate(parts)
    assert len(parts) == n_clients
    assert len(flat) == len(set(flat.tolist()))
    assert flat.min() >= 0
    assert flat.max() < len(labels)
    if kind == "iid":
        assert len(flat) == len(labels)
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_labels_partition_gives_each_client_k_labels() -> None:
    labels = load_dataset("mnist").train.y
    spec = PartitionSpec(kind="labels", labels_per_client=2)
    parts = partition_indices(labels, 100, spec)
    assert all(len(set(labels[p].tolist())) <= 2 for p in parts)
    assert sum(map(len, parts)) == len(labels)


def test_dirichlet_skews_labels() -> None:
    labels = load_dataset("mnist").train.y
    parts = partition_indices(labels, 10, PartitionSpec(kind="dirichlet", alpha=0.1))
    dominant = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert np.mean(dominant) > 0.4  # IID would be ~0.11


def test_cached_partitions_equal_computed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEAI_CACHE_DIR", str(tmp_path))
    labels = load_dataset("mnist").train.y
    spec = PartitionSpec(kind="dirichlet", alpha=0.5)
    first = cached_partition_indices(labels, 7, spec)
    assert list(tmp_path.rglob("*.npz"))
    again = cached_partition_indices(labels, 7, spec)
    direct = partition_indices(labels, 7, spec)
    for a, b, c in zip(first, again, direct, strict=True):
        assert np.array_equal(a, b)
        assert np.array_equal(a, c)


def test_partition_spec_rejects_options_of_other_kinds() -> None:
    with pytest.raises(ValueError, match="alpha applies only"):
        PartitionSpec.model_validate({"kind": "iid", "alpha": 0.3})
    with pytest.raises(ConfigError, match="classes"):
        partition_indices(
            np.zeros(100, np.int64), 4, PartitionSpec(kind="labels", labels_per_client=3)
        )


def test_regression_files_keep_raw_features_tokens_and_float_targets(tmp_path: Path) -> None:
    path = tmp_path / "tabular.npz"
    features = np.array([[59.0, 2.0, 32.1], [48.0, 1.0, 21.6]], np.float64)
    np.savez(path, X=features, y=np.array([151.0, 75.0]))
    x, y = load_npz(path, float_targets=True)
    assert (x.dtype, y.dtype) == (np.float32, np.float32)
    assert x.tolist() == features.astype(np.float32).tolist()  # no rescaling of features
    assert y.tolist() == [151.0, 75.0]
    with pytest.raises(DataError, match="integer labels"):
        load_npz(path)  # a classification reader still wants labels
    tokens = tmp_path / "tokens.npz"
    np.savez(tokens, X=np.array([[3, 1, 4], [1, 5, 9]], np.int32), y=np.array([2, 6]))
    x, y = load_npz(tokens)
    assert (x.dtype, x.tolist(), y.tolist()) == (np.int64, [[3, 1, 4], [1, 5, 9]], [2, 6])
    np.savez(path, X=features, y=np.array([np.inf, 1.0]))
    with pytest.raises(DataError, match="finite"):
        load_npz(path, float_targets=True)
