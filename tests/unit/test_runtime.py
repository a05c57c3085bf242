"""The runtime session factory: provider options from the profile, smoke test, fallback."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from edgeai.models import build_model
from edgeai.models.export import export_onnx
from edgeai.profiles import DeviceProfile, load_profile
from edgeai.runtime import RuntimeLoadError, create_session, provider_options
from edgeai.runtime.bench import torch_from_onnx

TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rt") / "m.onnx"
    return export_onnx(build_model("dp-cnn-tiny", (1, 28, 28), 10, seed=0), (1, 28, 28), path)


@pytest.mark.parametrize("name", ["jetson-agx-orin-64gb", "jetson-nano", "x86-64-cuda"])
def test_gpu_profiles_fall_back_to_cpu_here_and_say_why(
    name: str, model: Path, tmp_path: Path
) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this host has onnxruntime-gpu")
    session, provider, fallbacks = create_session(model, load_profile(name), tmp_path)
    assert provider == CPU
    assert [f.provider for f in fallbacks] == [TRT, CUDA]
    assert all("not in this onnxruntime build" in f.reason for f in fallbacks)
    assert session.get_providers()[0] == CPU


def test_listed_provider_that_fails_at_load_falls_back(model: Path, tmp_path: Path) -> None:
    # A wheel can list CUDA while the driver is missing: ORT then comes up on CPU silently.
    profile = load_profile("x86-64-cuda")
    loaded = create_session(model, profile, tmp_path, available=[TRT, CUDA, CPU])
    assert loaded.provider == CPU
    assert len(loaded.fallbacks) == 2
    assert all(("came up on" in f.reason or "failed" in f.reason) for f in loaded.fallbacks)


def test_smoke_failure_falls_back_and_total_failure_raises(model: Path, tmp_path: Path) -> None:
    calls: list[str] = []

    def factory(path: str, options: Any, providers: list[Any]) -> Any:
        calls.append(providers[0][0])
        if providers[0][0] != CPU:
            raise RuntimeError("TensorRT engine build failed")
        return ort.InferenceSession(path, options, providers=[CPU])

    loaded = create_session(model, load_profile("jetson-xavier-nx"), tmp_path,
                            available=[TRT, CUDA, CPU], factory=factory)  # fmt: skip
    assert loaded.provider == CPU
    assert calls == [TRT, CUDA, CPU]
    assert "engine build failed" in loaded.fallbacks[0].reason

    def always(*_args: Any, **_kw: Any) -> Any:
        raise RuntimeError("no")

    with pytest.raises(RuntimeLoadError, match="no execution provider"):
        create_session(model, load_profile("rpi5"), tmp_path, factory=always)


def _with_dla(base: DeviceProfile) -> DeviceProfile:
    data = base.model_dump()
    data["execution_providers"][0]["options"]["trt_dla_enable"] = True
    return DeviceProfile.model_validate(data)


def test_tensorrt_options_follow_precision_cache_and_dla(tmp_path: Path) -> None:
    orin = load_profile("jetson-agx-orin-64gb")
    name, opts = provider_options(orin, "int8-static", tmp_path)[0]
    assert name == TRT
    assert opts["trt_int8_enable"] is True
    assert opts["trt_fp16_enable"] is True
    assert opts["trt_engine_cache_path"] == str(tmp_path / "engines")
    assert opts["trt_timing_cache_path"] == str(tmp_path / "timing")
    assert "trt_dla_core" not in opts
    fp32 = dict(provider_options(orin, "fp32", None)[0][1])
    assert fp32["trt_int8_enable"] is False
    assert fp32["trt_fp16_enable"] is False
    assert "trt_engine_cache_path" not in fp32
    assert provider_options(_with_dla(orin), "fp16", tmp_path)[0][1]["trt_dla_core"] == 0
    assert [n for n, _ in provider_options(load_profile("rpi4"), "fp32")] == [CPU]


def test_bundle_precision_comes_from_the_manifest(tmp_path: Path, model: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(model.read_bytes())
    (tmp_path / "manifest.json").write_text('{"precision": "int8-static"}')
    loaded = create_session(tmp_path, load_profile("x86-64-vnni"))
    assert loaded.provider == CPU
    assert loaded.fallbacks == ()


def test_torch_rebuild_from_onnx_weights_matches(model: Path) -> None:
    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    rebuilt = torch_from_onnx(model, (1, 28, 28), 10)
    assert rebuilt is not None
    x = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32)
    want = ort.InferenceSession(str(model), providers=[CPU]).run(None, {"input": x})[0]
    with torch.inference_mode():
        got = rebuilt(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_engines_are_timed_in_interleaved_rounds() -> None:
    """One engine per round in turn (A, B, A, B, ...), so noise hits them alike."""
    import numpy as np  # noqa: PLC0415

    from edgeai.runtime.measure import time_interleaved  # noqa: PLC0415

    calls: list[str] = []

    def engine(name: str) -> Callable[[object], object]:
        def run(x: object) -> object:
            if not calls or calls[-1] != name:
                calls.append(name)
            return x

        return run

    x = np.zeros((4, 1, 28, 28), np.float32)
    timings = time_interleaved({"a": engine("a"), "b": engine("b")}, x, repeats=20, rounds=3)
    assert calls == ["a", "b"] * 3
    assert [len(t.rounds) for t in timings.values()] == [3, 3]
    assert set(timings["a"].as_json()) >= {"p95_ms_batch1", "throughput_spread_pct", "rounds"}
    with pytest.raises(ValueError, match="rounds"):
        time_interleaved({"a": engine("a")}, x, repeats=20, rounds=0)
