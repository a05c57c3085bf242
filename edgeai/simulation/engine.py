"""Start Ray for Flower's simulation engine, early and with our settings.

Flower starts Ray itself when it is not running; starting it ourselves first
lets the CLI boot Ray's processes while it imports torch and Flower (about
2 s saved on two cores), and keeps Ray from phoning home for usage stats.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edgeai.flower.experiment import SimulationConfig


def init_ray(sim: SimulationConfig) -> None:
    """Start a local Ray (or connect to ``sim.ray_address``) unless one is running."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # silences a FutureWarning
    import ray  # noqa: PLC0415  (slow import, train extra)

    if ray.is_initialized():
        return
    # As Flower does: workers must import what this process can (e.g. a test's ClientApp).
    pythonpath = os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    os.environ["PYTHONPATH"] = pythonpath
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
    }
    if sim.ray_address:
        kwargs["address"] = sim.ray_address
    elif sim.num_cpus is not None:
        kwargs["num_cpus"] = sim.num_cpus
    ray.init(**kwargs)


def boot(sim: SimulationConfig, modules: Sequence[str]) -> None:
    """Start Ray in this thread while another imports ``modules`` (torch, Flower...).

    Both take seconds and mostly wait on different things (Ray on its daemons
    coming up, imports on the disk and the interpreter), so overlapping them
    shortens the time to the first round.
    """
    if sim.backend == "vmap":  # no Ray at all: its import alone takes seconds
        for module in modules:
            importlib.import_module(module)
        return
    with ThreadPoolExecutor(1) as pool:
        imported = pool.submit(lambda: [importlib.import_module(m) for m in modules])
        init_ray(sim)
        imported.result()
