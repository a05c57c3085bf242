"""On-device gate logic with an in-memory session: golden, latency, memory, load failures."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeai.artifacts import GateSettings, run_gate
from edgeai.profiles import DeviceProfile, load_profile
from edgeai.runtime.session import LoadedSession, RuntimeLoadError

REF = np.arange(20, dtype=np.float32).reshape(2, 10)


class FakeSession:
    def __init__(self, shift: float = 0.0) -> None:
        self.shift = shift
        self.calls = 0

    def run(self, _outputs: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        (x,) = feeds.values()
        return [REF[: len(x)] + self.shift]


def loader(session: Any) -> Callable[[Path, DeviceProfile], LoadedSession]:
    return lambda _bundle, _profile: LoadedSession(session, "CPUExecutionProvider", ())


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "model.onnx").write_bytes(b"x" * 1000)
    np.savez(tmp_path / "golden.npz", **{"in.input": np.zeros((2, 3)), "out.logits": REF})
    manifest = {
        "model": {"name": "m", "version": "1"},
        "profile": "x86-64-avx2",
        "files": {n: hashlib.sha256((tmp_path / n).read_bytes()).hexdigest()
                  for n in ("model.onnx", "golden.npz")},
        "inputs": [{"name": "input"}],
        "golden": {"file": "golden.npz", "input_key": "in.input", "output_key": "out.logits",
                   "atol": 1e-3},
    }  # fmt: skip
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return tmp_path


@pytest.fixture
def profile() -> DeviceProfile:
    return load_profile("x86-64-avx2")  # p95 budget 5 ms, memory budget 1024 MB


FAST = GateSettings(runs=20, warmup=2)


def steps(ms: float) -> Callable[[], float]:
    counter = itertools.count()
    return lambda: next(counter) * ms / 1000.0


def test_a_matching_fast_small_model_passes(bundle: Path, profile: DeviceProfile):
    session = FakeSession()
    result = run_gate(bundle, profile, settings=FAST, load=loader(session), timer=steps(1.0),
                      rss=lambda: 100 * 2**20)  # fmt: skip
    assert result.ok, result.reasons
    assert result.measurements["p95_ms"] == pytest.approx(1.0)
    assert result.measurements["max_abs_diff"] == 0.0
    assert session.calls == 1 + FAST.warmup + FAST.runs


def test_golden_outputs_outside_atol_fail(bundle: Path, profile: DeviceProfile):
    result = run_gate(bundle, profile, settings=FAST, load=loader(FakeSession(0.01)),
                      timer=steps(0.1))  # fmt: skip
    assert not result.ok
    assert any(r.startswith("golden: max abs diff") for r in result.reasons)


def test_nan_outputs_fail(bundle: Path, profile: DeviceProfile):
    result = run_gate(bundle, profile, settings=FAST, load=loader(FakeSession(float("nan"))),
                      timer=steps(0.1))  # fmt: skip
    assert not result.ok


def test_latency_over_budget_fails(bundle: Path, profile: DeviceProfile):
    result = run_gate(bundle, profile, settings=FAST, load=loader(FakeSession()), timer=steps(9))
    assert not result.ok
    assert result.reasons == ("latency: p95 9 ms at batch 1 > budget 5.0 ms",)


def test_memory_growth_over_budget_fails(bundle: Path, profile: DeviceProfile):
    readings = iter([0, 2000 * 2**20])
    result = run_gate(bundle, profile, settings=FAST, load=loader(FakeSession()),
                      timer=steps(0.1), rss=lambda: next(readings))  # fmt: skip
    assert not result.ok
    assert result.reasons[0].startswith("memory: grew 2000.0 MB")


def test_load_failure_is_a_reason_not_an_exception(bundle: Path, profile: DeviceProfile):
    def broken(_bundle: Path, _profile: DeviceProfile) -> LoadedSession:
        raise RuntimeLoadError("no provider could run the model")

    result = run_gate(bundle, profile, load=broken)
    assert not result.ok
    assert result.reasons == ("model.onnx: cannot be loaded (no provider could run the model)",)


def test_wrong_output_shape_fails(bundle: Path, profile: DeviceProfile):
    class Short(FakeSession):
        def run(self, _outputs: Any, _feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            return [np.zeros((1, 3))]

    result = run_gate(bundle, profile, settings=FAST, load=loader(Short()), timer=steps(0.1))
    assert not result.ok
    assert "output shape" in result.reasons[0]
