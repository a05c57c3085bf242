"""The on-device gate: a staged bundle must reproduce its golden outputs and fit the budgets.

Golden outputs within the manifest's ``golden.atol``; p95 latency at batch 1 within
``budgets.p95_latency_ms_batch1``; resident-memory growth from loading and running within
``budgets.memory_mb``; model file within ``budgets.model_size_mb``
(``edgeai/profiles/schema.py``: ``Budgets``). Timer and memory probe are injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeai.artifacts._bundle import read_manifest
from edgeai.errors import EdgeAIError
from edgeai.profiles import DeviceProfile
from edgeai.runtime.session import LoadedSession, create_session

MB = 1024 * 1024
Loader = Callable[[Path, DeviceProfile], LoadedSession]


@dataclass(frozen=True)
class GateSettings:
    """How hard the gate measures: timed batch-1 runs after warm-up runs."""

    runs: int = 50
    warmup: int = 5


@dataclass(frozen=True)
class GateResult:
    """Whether the bundle passed, each failed check in words, and what was measured."""

    ok: bool
    reasons: tuple[str, ...]
    measurements: dict[str, Any] = field(default_factory=dict)


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def _golden(bundle: Path, manifest: dict[str, Any]) -> tuple[str, Any, Any, float]:
    spec = manifest["golden"]
    with np.load(bundle / spec["file"], allow_pickle=False) as data:
        x, ref = data[spec["input_key"]], data[spec["output_key"]]
    return str(manifest["inputs"][0]["name"]), x, ref, float(spec["atol"])


def run_gate(
    bundle: Path,
    profile: DeviceProfile,
    *,
    settings: GateSettings | None = None,
    load: Loader = create_session,
    timer: Callable[[], float] = time.perf_counter,
    rss: Callable[[], int] = _rss,
) -> GateResult:
    """Load ``bundle`` as the device would and check it against its golden data and budgets.

    Parameters
    ----------
    bundle
        A staged bundle directory.
    profile
        This device's profile (providers and budgets).
    settings
        Number of timed and warm-up runs.
    load
        Builds the session (``create_session`` by default); unit tests inject one.
    timer
        Seconds, for latency.
    rss
        Resident bytes of this process, for memory growth.

    Returns
    -------
    GateResult
        ``ok`` only when every check passed; never raises for a bad bundle.
    """
    opts = settings or GateSettings()
    budgets = profile.budgets
    measured: dict[str, Any] = {}
    try:
        manifest = read_manifest(bundle)
        input_name, x, ref, atol = _golden(bundle, manifest)
        size_mb = (bundle / "model.onnx").stat().st_size / MB
        before = rss()
        loaded = load(bundle, profile)
        out = loaded.session.run(None, {input_name: x})[0]
        grown_mb = max(0, rss() - before) / MB
    except (EdgeAIError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
        return GateResult(False, (f"load: {exc}",), measured)
    except Exception as exc:
        return GateResult(False, (f"run: {type(exc).__name__}: {exc}",), measured)
    reasons: list[str] = []
    measured |= {"provider": loaded.provider, "model_size_mb": round(size_mb, 3)}
    if np.shape(out) != np.shape(ref):
        reasons.append(f"golden: output shape {np.shape(out)} != expected {np.shape(ref)}")
    else:
        diff = float(np.max(np.abs(np.asarray(out, np.float64) - ref))) if ref.size else 0.0
        measured |= {"max_abs_diff": diff, "atol": atol}
        if not diff <= atol:  # NaN fails too
            reasons.append(f"golden: max abs diff {diff:.3g} > atol {atol:.3g}")
    one = {input_name: x[:1]}
    for _ in range(opts.warmup):
        loaded.session.run(None, one)
    times = []
    for _ in range(opts.runs):
        start = timer()
        loaded.session.run(None, one)
        times.append((timer() - start) * 1000.0)
    p95 = float(np.percentile(times, 95)) if times else 0.0
    measured |= {"p95_ms": round(p95, 4), "rss_growth_mb": round(grown_mb, 2)}
    if p95 > budgets.p95_latency_ms_batch1:
        reasons.append(
            f"latency: p95 {p95:.3g} ms at batch 1 > budget {budgets.p95_latency_ms_batch1} ms"
        )
    if grown_mb > budgets.memory_mb:
        reasons.append(f"memory: grew {grown_mb:.1f} MB > budget {budgets.memory_mb} MB")
    if size_mb > budgets.model_size_mb:
        reasons.append(f"size: model {size_mb:.2f} MB > budget {budgets.model_size_mb} MB")
    return GateResult(not reasons, tuple(reasons), measured)
