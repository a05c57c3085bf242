"""Shared fixtures: every test runs with Flower's telemetry off and a private cache."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


# Files that start many processes, in two chains. Under ``make test``'s two xdist workers
# each chain runs one file after another on one worker: two Flower fleets at once on two
# cores missed their deadlines (one test took 18x its serial time). A fleet beside a Ray
# simulation is fine: the fleets' tests mostly wait (round timeouts, heartbeats), Ray
# computes.
_CHAINS = {
    "flower-fleets": ("federation_flower", "fleet_e2e", "task_fleet", "warm_exec"),
    "ray": ("custom_task", "ray_cluster", "secagg_dp", "simulation", "vmap_vs_ray"),
}
CHAIN_OF = {
    f"tests/integration/test_{name}.py": chain for chain, names in _CHAINS.items() for name in names
}
MANY_PROCESSES = frozenset(CHAIN_OF)


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the fleet files ``many_processes``; run them first, then files with slow tests."""
    for item in items:
        if _file_of(item.nodeid) in MANY_PROCESSES:
            item.add_marker(pytest.mark.many_processes)
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(
        key=lambda item: (_file_of(item.nodeid) not in MANY_PROCESSES, item.path not in slow)
    )


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole files per worker; each chain of MANY_PROCESSES files is one unit (one worker).

    Not ``--dist loadgroup``: with pytest 9.2 it silently stops grouping (its node-id
    suffix no longer takes; pytest-dev/pytest-xdist#1386), and it would hand out every
    other test one by one, building module fixtures on both workers.
    """
    from xdist.scheduler import (  # type: ignore[import-untyped]  # noqa: PLC0415
        LoadScopeScheduling,  # only under xdist
    )

    class FleetsTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path = _file_of(nodeid)
            return CHAIN_OF.get(path, path)

    return FleetsTogether(config, log)
