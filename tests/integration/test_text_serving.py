"""A text task through compile and serving: int64 token ids in, logits out, vocab inside.

The built-in ``shakespeare`` task's LSTM (a small one) exported as `edgeai simulate` does,
compiled by `edgeai compile` with held-out windows as calibration (int64 ``X``), served by
`edgeai agent serve` and asked by the stock tritonclient with an INT64 tensor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeai.models.export import export_onnx
from edgeai.task import TaskConfig, load_task
from tests.support.serving import compile_cli, serve_and_probe

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("text")
    task = load_task(TaskConfig(name="shakespeare", options={"hidden": 32, "val_windows": 300}))
    torch.manual_seed(0)
    meta = {"edgeai.primary_metric": "accuracy", **task.onnx_metadata()}
    model = export_onnx(task.build_model(), task.example_input(), root / "model.onnx", meta)
    _, val = task.datasets()
    x = np.stack([np.asarray(val[i][0]) for i in range(len(val))]).astype(np.int64)
    y = np.array([int(val[i][1]) for i in range(len(val))])
    np.savez(root / "heldout.npz", X=x, y=y)
    return model, root / "heldout.npz"


def test_a_text_model_compiles_with_token_ids_and_keeps_its_vocabulary(
    text_model: tuple[Path, Path], tmp_path: Path
) -> None:
    model, heldout = text_model
    manifest = compile_cli(model, "rpi5", heldout, tmp_path / "bundle")
    assert manifest["inputs"][0]["dtype"] == "int64"
    assert manifest["inputs"][0]["shape"][1:] == [80]
    assert manifest["outputs"][0]["shape"][1:] == [65]
    built = {c["precision"]: c for c in manifest["candidates"] if "size_mb" in c}
    # Dynamic int8 quantizes the LSTM's weights once constants are folded (bench notes).
    assert built["int8-dynamic"]["size_mb"] < 0.6 * built["fp32"]["size_mb"], built
    assert manifest["precision"] == "int8-dynamic"  # untimed: the smallest within budgets
    meta = {
        p.key: p.value for p in onnx.load(str(tmp_path / "bundle" / "model.onnx")).metadata_props
    }
    assert len(json.loads(meta["edgeai.vocab"])) == 65  # a JSON list of symbols in id order


def test_the_stock_tritonclient_sends_int64_token_ids(
    text_model: tuple[Path, Path], tmp_path: Path
) -> None:
    model, heldout = text_model
    bundle = tmp_path / "bundle"
    compile_cli(model, "rpi5", heldout, bundle)
    with np.load(heldout) as data:
        x = np.ascontiguousarray(data["X"][:3])
    served = serve_and_probe(bundle, "rpi5", x, tmp_path)
    reference = ort.InferenceSession(str(bundle / "model.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(np.array(served["http_outputs"]), reference, atol=1e-5)
    np.testing.assert_allclose(np.array(served["grpc_outputs"]), reference, atol=1e-5)
    assert served["grpc_bad_shape"]["status"] != "ok"
