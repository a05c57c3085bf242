"""Check candidates against the profile's budgets and pick the winner."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeai.compile.score import GateMetric
from edgeai.errors import CompileError
from edgeai.profiles import DeviceProfile
from edgeai.runtime import measure as ev
from edgeai.runtime.session import cpu_threads


@dataclass(frozen=True)
class CompileOptions:
    """Sample counts and timing effort; the defaults suit MNIST-sized models.

    ``latency_rounds`` interleaved rounds time every candidate (``latency_repeats``
    batch-1 calls each, spread over the rounds).  A larger candidate is chosen over a
    smaller one only when it is faster by more than ``min_speedup_pct`` and by more than
    the noise measured over the rounds.
    """

    calibration_samples: int = 256
    eval_samples: int = 2000
    golden_samples: int = 8
    latency_repeats: int = 200
    latency_rounds: int = 5
    min_speedup_pct: float = 10.0
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


def evaluate_candidate(
    c: Candidate,
    ref: np.ndarray[Any, Any],
    xs: np.ndarray[Any, Any],
    ys: np.ndarray[Any, Any],
    profile: DeviceProfile,
    *,
    metric: GateMetric,
) -> None:
    """Load ``c`` on the CPU provider; compare its outputs with ``ref`` and score them."""
    size_mb = c.path.stat().st_size / 1e6
    c.metrics["size_mb"] = round(size_mb, 4)
    try:
        session = ev.cpu_session(str(c.path), cpu_threads(profile))
    except Exception as exc:  # ORT's own error types are untyped
        c.violations.append(f"does not load on this host's CPU provider: {exc}")
        return
    outputs = ev.predict(session, xs)
    q = ev.quality(outputs, ref, ys if metric.name == "accuracy" else None)
    c.metrics.update(q.as_json())
    c.metrics[metric.name] = c.metrics["score"] = metric(outputs, ys)
    c.metrics["eval_samples"] = len(xs)
    if size_mb > profile.budgets.model_size_mb:
        c.violations.append(f"size {size_mb:.2f} MB > budget {profile.budgets.model_size_mb}")


def time_candidates(
    cands: list[Candidate],
    xs: np.ndarray[Any, Any],
    profile: DeviceProfile,
    opts: CompileOptions,
) -> None:
    """Time the loadable candidates side by side, in interleaved rounds, on this host.

    Records ``latency_host`` (medians, per-round throughput, spread) in each candidate's
    metrics and a violation when the median p95 at batch 1 is over the profile's budget.
    """
    loaded = {c.precision: c for c in cands if "top1_agreement" in c.metrics}
    runners = {
        name: ev.session_runner(ev.cpu_session(str(c.path), cpu_threads(profile)))
        for name, c in loaded.items()
    }
    timings = ev.time_interleaved(runners, xs, opts.latency_repeats, opts.latency_rounds)
    budget = profile.budgets.p95_latency_ms_batch1
    for name, timing in timings.items():
        c = loaded[name]
        c.metrics["latency_host"] = timing.as_json()
        p95 = timing.median().p95_ms_batch1
        if p95 > budget:
            c.violations.append(f"p95 {p95:.3f} ms > budget {budget}")


def note_untimed(cands: list[Candidate], profile: DeviceProfile) -> None:
    """Say in each candidate's notes why it was not timed."""
    for c in cands:
        if c.precision == "fp16":
            c.notes.append("latency not measured: fp16 targets the GPU and this host has none")
        else:
            c.notes.append(f"latency not measured: this host cannot stand in for {profile.name}")


@dataclass(frozen=True)
class SpeedFacts:
    """What the speed rule needs to know about one candidate that fits the budgets."""

    name: str
    size_bytes: int
    throughput: float  # median over rounds, samples/s at batch 64
    spread_pct: float  # the noise of that median: range over rounds, % of the median


@dataclass(frozen=True)
class SpeedChoice:
    """The outcome of :func:`prefer_smaller`, with the numbers that decided it."""

    chosen: str
    fastest: str
    compared_with: str | None  # the candidate the chosen one was weighed against
    speedup_pct: float  # how much faster the larger of the two pair is (0: no pair)
    noise_pct: float  # the larger spread of the pair
    threshold_pct: float  # max(noise, the minimum speed-up)
    reason: str

    def as_json(self) -> dict[str, object]:
        """The decision's numbers for the manifest."""
        return {
            "rule": "smallest candidate unless a larger one is faster by more than "
            "max(measured noise, minimum speed-up)",
            "metric": "throughput_batch64 (median over interleaved rounds)",
            "fastest": self.fastest,
            "compared_with": self.compared_with,
            "speedup_pct": round(self.speedup_pct, 2),
            "noise_pct": round(self.noise_pct, 2),
            "threshold_pct": round(self.threshold_pct, 2),
        }


def _gain_pct(fast: SpeedFacts, slow: SpeedFacts) -> float:
    return (fast.throughput / max(slow.throughput, 1e-12) - 1) * 100


def prefer_smaller(facts: list[SpeedFacts], min_speedup_pct: float) -> SpeedChoice:
    """Pick the smallest candidate whose speed cannot be told apart from the fastest's.

    A candidate is "as fast" as the fastest one when the fastest beats it by no more than
    ``max(min_speedup_pct, the spread of either)``: a difference within the measured
    noise is not evidence, and a few per cent of speed do not pay for several times the
    bytes to ship and keep in memory.  Pure: no timing happens here.

    Raises
    ------
    ValueError
        If ``facts`` is empty.
    """
    if not facts:
        raise ValueError("no candidates to choose from")
    fastest = max(facts, key=lambda f: f.throughput)

    def threshold(f: SpeedFacts) -> float:
        return max(min_speedup_pct, fastest.spread_pct, f.spread_pct)

    ties = [f for f in facts if _gain_pct(fastest, f) <= threshold(f)]
    chosen = min(ties, key=lambda f: (f.size_bytes, -f.throughput))
    if chosen is not fastest:
        gain, limit = _gain_pct(fastest, chosen), threshold(chosen)
        return SpeedChoice(
            chosen.name,
            fastest.name,
            fastest.name,
            gain,
            max(fastest.spread_pct, chosen.spread_pct),
            limit,
            f"{chosen.name} is {fastest.size_bytes / chosen.size_bytes:.1f}x smaller than "
            f"the fastest, {fastest.name}, which is only {gain:.1f}% faster: within the "
            f"threshold of {limit:.1f}% (max of the measured noise "
            f"{max(fastest.spread_pct, chosen.spread_pct):.1f}% and the minimum speed-up "
            f"{min_speedup_pct:.0f}%)",
        )
    smaller = [f for f in facts if f.size_bytes < chosen.size_bytes]
    if not smaller:
        return SpeedChoice(
            chosen.name,
            fastest.name,
            None,
            0.0,
            chosen.spread_pct,
            max(min_speedup_pct, chosen.spread_pct),
            f"{chosen.name} is both the fastest and the smallest",
        )
    rival = max(smaller, key=lambda f: f.throughput)
    gain, limit = _gain_pct(chosen, rival), threshold(rival)
    return SpeedChoice(
        chosen.name,
        fastest.name,
        rival.name,
        gain,
        max(chosen.spread_pct, rival.spread_pct),
        limit,
        f"{chosen.name} is {gain:.1f}% faster than the smaller {rival.name}: more than "
        f"the threshold of {limit:.1f}% (max of the measured noise "
        f"{max(chosen.spread_pct, rival.spread_pct):.1f}% and the minimum speed-up "
        f"{min_speedup_pct:.0f}%)",
    )


def choose(
    cands: list[Candidate],
    *,
    timed: bool,
    reference: float | None,
    metric: GateMetric,
    budget: float,
    min_speedup_pct: float = 10.0,
) -> tuple[Candidate, str, dict[str, object] | None]:
    """Pick a candidate within budgets, say why, and give the timing decision's numbers.

    ``reference`` is the fp32 model's ``metric``; a candidate whose score drops further
    below it than ``budget`` (:meth:`GateMetric.drop_pct`) does not fit.

    Timed: :func:`prefer_smaller` over the candidates that fit.  Untimed: the one that fits
    with the smallest file, ties in the profile's order (the decision's numbers are then
    ``None``).
    """
    for c in cands:
        score = c.metrics.get("score")
        if reference is not None and isinstance(score, float):
            drop = metric.drop_pct(reference, score)
        else:
            drop = (1 - float(c.metrics.get("top1_agreement", 0.0))) * 100
        c.metrics["accuracy_drop_pct"] = round(drop, 4)
        if "top1_agreement" in c.metrics and drop > budget:
            unit = "points" if metric.is_fraction else "% of the fp32 error"
            c.violations.append(f"{metric.name} drop {drop:.2f} {unit} > budget {budget}")
    fits = [c for c in cands if not c.violations]
    if not fits:
        why = "; ".join(f"{c.precision}: {', '.join(c.violations)}" for c in cands)
        raise CompileError(f"no candidate meets the profile's budgets: {why}")
    if timed:
        facts = [
            SpeedFacts(
                c.precision,
                c.path.stat().st_size,
                float(c.metrics["latency_host"]["throughput_batch64"]),
                float(c.metrics["latency_host"]["throughput_spread_pct"]),
            )
            for c in fits
        ]
        decision = prefer_smaller(facts, min_speedup_pct)
        best = next(c for c in fits if c.precision == decision.chosen)
        lat = best.metrics["latency_host"]
        return (
            best,
            f"{decision.reason}; among {[c.precision for c in fits]} within budgets "
            f"(throughput at batch 64 {lat['throughput_batch64']:.0f}/s, p95 batch 1 "
            f"{lat['p95_ms_batch1']:.3f} ms, medians of {lat['rounds']} rounds)",
            decision.as_json(),
        )
    # Untimed, the smaller file is the better guess (memory, download, and int8 is rarely
    # slower on the devices that offer it); ties go to the profile's order. The order alone
    # would keep a static int8 that left an LSTM in fp32 (0.97x) over a dynamic one (0.26x).
    smallest = min(fits, key=lambda c: (c.path.stat().st_size, fits.index(c)))
    return (
        smallest,
        f"the smallest of {[c.precision for c in fits]} that meet the accuracy and size "
        "budgets (latency cannot be measured on this host; ties go to the profile's order)",
        None,
    )
