"""examples/custom-task end to end: simulate → model.onnx equals torch → compile → serve."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from tests.support.serving import EDGEAI, compile_cli, serve_and_probe

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "custom-task"


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(EDGEAI), *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _user_module(folder: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("custom_task_under_test", folder / "task.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The user's copy of the example and its simulation's output (2 rounds)."""
    tmp_path = tmp_path_factory.mktemp("custom-task")
    user = tmp_path / "my-task"  # the user's copy of the example, outside the package
    shutil.copytree(EXAMPLE, user, ignore=shutil.ignore_patterns("data.npz", "__pycache__"))
    exp = user / "experiment.toml"
    text = (
        exp.read_text()
        .replace("rounds = 5", "rounds = 2")
        .replace("samples = 2000", "samples = 600")
    )
    exp.write_text(text)
    out = tmp_path / "out"
    _run("simulate", str(exp), "--out", str(out))
    return user, out


def test_the_simulated_model_onnx_equals_the_torch_model(trained: tuple[Path, Path]) -> None:
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415
    import torch  # noqa: PLC0415

    user, out = trained

    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in lines] == [1, 2]
    assert all(r["metrics"]["accuracy"] == r["accuracy"] for r in lines)
    assert lines[-1]["epsilon"] is not None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"]["name"] == "custom-rgb"
    assert summary["primary_metric"] == "accuracy"

    # model.onnx gives the torch model's outputs on the user's data.
    module = _user_module(user)
    task = module.CustomTask(data=str(user / "data.npz"), samples=600)
    from edgeai.models.checkpoint import load_checkpoint  # noqa: PLC0415

    model = task.build_model()
    state = load_checkpoint(out / "checkpoint.npz").state()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()})
    model.eval()
    with np.load(user / "data.npz") as data:
        x = (data["X"][:64].astype(np.float32) / 255.0).copy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    assert np.abs(got - want).max() <= 1e-4
    meta = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert meta["edgeai.task"] == "custom-rgb"
    assert meta["edgeai.primary_metric"] == "accuracy"


def _compile(user: Path, model: Path, profile: str, out: Path) -> Path:
    compile_cli(model, profile, user / "data.npz", out)
    return out


def test_the_model_compiles_for_x86_64_avx2(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from edgeai.compile import CompileOptions, compile_model  # noqa: PLC0415
    from edgeai.profiles import load_profile  # noqa: PLC0415

    user, out = trained
    # Untimed: this host's p95 against the profile's 5 ms budget depends on its load (a
    # loaded CI box measured 9.4 ms); the budgets' timing is tested in test_compile.py.
    untimed = CompileOptions(measure_latency=False)
    manifest = compile_model(out / "model.onnx", load_profile("x86-64-avx2"),
                             user / "data.npz", tmp_path / "bundle", options=untimed)  # fmt: skip
    (static,) = [c for c in manifest["candidates"] if c["precision"] == "int8-static"]
    # GroupNorm as the dynamo exporter writes it once made ORT's quantizer define a tensor
    # twice, and the int8 candidate did not load.
    assert not any("does not load" in v for v in static.get("violations", [])), static


def test_the_rpi5_bundle_is_served_to_the_stock_tritonclient(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    import onnxruntime as ort  # noqa: PLC0415

    user, out = trained
    bundle = _compile(user, out / "model.onnx", "rpi5", tmp_path / "bundle")
    with np.load(user / "data.npz") as data:
        x = (data["X"][:3].astype(np.float32) / 255.0).copy()
    served = serve_and_probe(bundle, "rpi5", x, tmp_path)
    reference = ort.InferenceSession(str(bundle / "model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.array(served["http_outputs"]), reference, atol=1e-5)
    np.testing.assert_allclose(np.array(served["grpc_outputs"]), reference, atol=1e-5)
