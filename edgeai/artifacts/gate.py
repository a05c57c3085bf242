"""The on-device checks: a bundle must be intact, reproduce its golden outputs, fit the budgets.

:func:`verify_bundle` is the one verification every entry point runs on a bundle
(``agent serve``, the agent's factory bundle, every staged release through
:func:`run_gate`): integrity, profile, golden outputs. :func:`run_gate` adds the budgets a
release must meet on this device: p95 latency at batch 1 within
``budgets.p95_latency_ms_batch1``; resident-memory growth from loading and running within
``budgets.memory_mb``; model file within ``budgets.model_size_mb``
(``edgeai/profiles/schema.py``: ``Budgets``). Timer and memory probe are injected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgeai.artifacts._bundle import (
    MODEL,
    InvalidBundle,
    bundle_mismatches,
    read_manifest,
    servable_problems,
)
from edgeai.artifacts.errors import ArtifactError
from edgeai.profiles import DeviceProfile
from edgeai.runtime.session import LoadedSession, create_session

__all__ = [
    "GateResult",
    "GateSettings",
    "InvalidBundle",
    "VerifiedBundle",
    "run_gate",
    "verify_bundle",
]

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


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle that passed :func:`verify_bundle`: its manifest and the session it ran in."""

    path: Path
    manifest: dict[str, Any]
    loaded: LoadedSession
    input_name: str
    golden_inputs: Any
    measurements: dict[str, Any]


def _golden_data(bundle: Path, manifest: dict[str, Any]) -> tuple[Any, Any]:
    spec = manifest["golden"]
    name = spec["file"]
    try:
        with np.load(bundle / name, allow_pickle=False) as data:
            x, ref = data[spec["input_key"]], data[spec["output_key"]]
    except KeyError as exc:
        raise InvalidBundle(bundle, [f"{name}: no array {exc} (manifest golden keys)"]) from exc
    except Exception as exc:  # numpy raises ValueError, zipfile.BadZipFile, EOFError ...
        raise InvalidBundle(bundle, [f"{name}: unreadable ({type(exc).__name__}: {exc})"]) from exc
    if not (isinstance(x, np.ndarray) and isinstance(ref, np.ndarray)) or x.ndim < 1:
        raise InvalidBundle(bundle, [f"{name}: golden inputs and outputs must be arrays"])
    if len(x) == 0 or ref.size == 0:  # an empty golden set would pass anything
        raise InvalidBundle(bundle, [f"{name}: no golden samples"])
    return x, ref


def _golden_problems(name: str, out: Any, ref: Any, atol: float) -> tuple[list[str], float]:
    if np.shape(out) != np.shape(ref):
        return [f"{name}: model output shape {np.shape(out)} != golden {np.shape(ref)}"], math.nan
    ref64 = np.asarray(ref, np.float64)
    diff = float(np.max(np.abs(np.asarray(out, np.float64) - ref64)))
    if not diff <= atol:  # NaN fails too
        return [f"golden: max abs diff {diff:.4g} > atol {atol:.3g} ({name} vs model)"], diff
    spread = float(np.max(ref64) - np.min(ref64))
    if 0 < spread <= atol:  # such a tolerance accepts any model with outputs in range
        return [f"golden: atol {atol:.3g} is not below the outputs' range {spread:.3g}"], diff
    return [], diff


def verify_bundle(
    bundle: Path, profile: DeviceProfile, *, load: Loader = create_session
) -> VerifiedBundle:
    """Check everything about ``bundle`` that can be checked without a signature.

    The one verification of every entry point: ``edgeai agent serve``, the agent's factory
    bundle, and (through :func:`run_gate`) every staged release. In order: the manifest's
    schema, every ``files`` entry a plain regular file inside the bundle with its sha256,
    the profile it was compiled for, then the model is loaded as the device would load it
    and must reproduce the golden fp32 outputs within ``golden.atol``.

    Raises
    ------
    InvalidBundle
        Its ``problems`` name each file and what is wrong with it.
    """
    problems = bundle_mismatches(bundle)
    if problems:
        raise InvalidBundle(bundle, problems)
    try:
        manifest = read_manifest(bundle)
    except ArtifactError as exc:  # changed since the check above
        raise InvalidBundle(bundle, [str(exc)]) from exc
    problems = servable_problems(manifest, profile.name)
    if problems:
        raise InvalidBundle(bundle, problems)
    spec = manifest["golden"]
    x, ref = _golden_data(bundle, manifest)
    input_name = str(manifest["inputs"][0]["name"])
    try:
        loaded = load(bundle, profile)
    except Exception as exc:  # RuntimeLoadError, or onnxruntime's own on a malformed graph
        detail = f"{exc}".splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidBundle(bundle, [f"{MODEL}: cannot be loaded ({detail})"]) from exc
    try:
        out = loaded.session.run(None, {input_name: x})[0]
    except Exception as exc:  # onnxruntime's own exception types
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise InvalidBundle(bundle, [f"{MODEL}: fails on the golden inputs ({detail})"]) from exc
    atol = float(spec["atol"])
    problems, diff = _golden_problems(str(spec["file"]), out, ref, atol)
    if problems:
        raise InvalidBundle(bundle, problems)
    measured = {"provider": loaded.provider, "max_abs_diff": diff, "atol": atol}
    return VerifiedBundle(bundle, manifest, loaded, input_name, x, measured)


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
    before = rss()
    try:
        verified = verify_bundle(bundle, profile, load=load)
    except InvalidBundle as exc:
        return GateResult(False, exc.problems, measured)
    grown_mb = max(0, rss() - before) / MB
    loaded, input_name, x = verified.loaded, verified.input_name, verified.golden_inputs
    size_mb = (bundle / MODEL).stat().st_size / MB
    reasons: list[str] = []
    measured |= {**verified.measurements, "model_size_mb": round(size_mb, 3)}
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
