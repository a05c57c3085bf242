"""Check candidates against the profile's budgets and pick the winner."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.compile import evaluate as ev
from edgeai.errors import CompileError
from edgeai.profiles import DeviceProfile
from edgeai.runtime.session import cpu_threads


@dataclass(frozen=True)
class CompileOptions:
    """Sample counts and timing effort; the defaults suit MNIST-sized models."""

    calibration_samples: int = 256
    eval_samples: int = 2000
    golden_samples: int = 8
    latency_repeats: int = 200
    measure_latency: bool = True  # only where the host can stand in for the profile


@dataclass
class Candidate:
    """One built model: its metrics, budget violations and notes for the manifest."""

    precision: str
    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def host_stands_in(profile: DeviceProfile) -> bool:
    """True when this host's CPU can time models for ``profile`` (an x86-64 CPU profile)."""
    return (
        profile.arch == "x86_64"
        and profile.accelerator.kind == "none"
        and platform.machine().lower() in ("x86_64", "amd64")
    )


def evaluate_candidate(  # noqa: PLR0917  (one call site, in bundle.py)
    c: Candidate,
    ref: np.ndarray[Any, Any],
    xs: np.ndarray[Any, Any],
    ys: np.ndarray[Any, Any],
    profile: DeviceProfile,
    timed: bool,
    opts: CompileOptions,
) -> None:
    """Load ``c`` on the CPU provider, compare it with ``ref``, time it if ``timed``."""
    size_mb = c.path.stat().st_size / 1e6
    c.metrics["size_mb"] = round(size_mb, 4)
    try:
        session = ev.cpu_session(str(c.path), cpu_threads(profile))
    except Exception as exc:  # ORT's own error types are untyped
        c.violations.append(f"does not load on this host's CPU provider: {exc}")
        return
    q = ev.quality(ev.predict(session, xs), ref, ys)
    c.metrics.update(q.as_json())
    c.metrics["eval_samples"] = len(xs)
    if size_mb > profile.budgets.model_size_mb:
        c.violations.append(f"size {size_mb:.2f} MB > budget {profile.budgets.model_size_mb}")
    if timed:
        lat = ev.measure(ev.session_runner(session), xs, opts.latency_repeats)
        c.metrics["latency_host"] = lat.as_json()
        if lat.p95_ms_batch1 > profile.budgets.p95_latency_ms_batch1:
            c.violations.append(
                f"p95 {lat.p95_ms_batch1:.3f} ms > budget {profile.budgets.p95_latency_ms_batch1}"
            )
    elif c.precision == "fp16":
        c.notes.append("latency not measured: fp16 targets the GPU and this host has none")
    else:
        c.notes.append(f"latency not measured: this host cannot stand in for {profile.name}")


def choose(
    cands: list[Candidate], *, timed: bool, fp32_acc: float | None, budget: float
) -> tuple[Candidate, str]:
    """Pick the fastest candidate within budgets (profile order when untimed), and why."""
    for c in cands:
        acc = c.metrics.get("accuracy")
        if fp32_acc is not None and isinstance(acc, float):
            drop = (fp32_acc - acc) * 100
        else:
            drop = (1 - float(c.metrics.get("top1_agreement", 0.0))) * 100
        c.metrics["accuracy_drop_pct"] = round(drop, 4)
        if "top1_agreement" in c.metrics and drop > budget:
            c.violations.append(f"accuracy drop {drop:.2f} points > budget {budget}")
    fits = [c for c in cands if not c.violations]
    if not fits:
        why = "; ".join(f"{c.precision}: {', '.join(c.violations)}" for c in cands)
        raise CompileError(f"no candidate meets the profile's budgets: {why}")
    if timed:
        best = max(fits, key=lambda c: c.metrics["latency_host"]["throughput_batch64"])
        return best, (
            f"fastest within budgets on this host (throughput at batch 64 "
            f"{best.metrics['latency_host']['throughput_batch64']:.0f}/s, p95 batch 1 "
            f"{best.metrics['latency_host']['p95_ms_batch1']:.3f} ms) among "
            f"{[c.precision for c in fits]}"
        )
    return fits[0], (
        f"first in the profile's precision order {[c.precision for c in cands]} that meets "
        "the accuracy and size budgets (latency cannot be measured on this host)"
    )
