"""Shared fixtures: every test runs with Flower's telemetry off and a private cache."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")


@pytest.fixture(autouse=True)
def _isolated_cache(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEAI_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running (a leaked server or engine)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5)
    still = [t.name for t in leaked if t.is_alive()]
    assert not still, f"test leaked threads: {still}"


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trained dp-cnn-tiny as ONNX and a uint8 calibration file (built once per session)."""
    from tests.bundles import train_and_export  # noqa: PLC0415

    return train_and_export(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model compiled for x86-64-avx2 (read-only: copy it before changing it)."""
    from tests.bundles import compile_bundle  # noqa: PLC0415

    model, cal = tiny_model
    return compile_bundle(model, cal, tmp_path_factory.mktemp("tiny-bundle") / "bundle")


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the ``many_processes`` files in one xdist group, and start with them.

    ``make test`` runs two workers with ``--dist loadgroup``: the files that start a
    SuperLink with SuperNodes or Ray run one after another on one worker (two of them at
    once on two cores missed their deadlines: one test took 18x its serial time), while the
    other worker takes every other file, whole. The group goes first: it is the longest.
    """
    for item in items:
        if item.get_closest_marker("many_processes"):
            item.add_marker(pytest.mark.xdist_group("many-processes"))
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(
        key=lambda item: (item.get_closest_marker("many_processes") is None, item.path not in slow)
    )
