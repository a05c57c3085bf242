from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgeai.errors import ConfigError, UnknownNameError
from edgeai.flower.experiment import MODEL_NAMES
from edgeai.models import build_model, model_names
from edgeai.models.export import export_onnx


def test_registry_and_config_agree() -> None:
    assert tuple(model_names()) == MODEL_NAMES


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fedavg-cnn", 1_663_370),
        ("fedavg-2nn", 199_210),
        ("dp-cnn", 26_010),
        ("dp-cnn-tiny", 4_874),
        ("scatternet", 39_700),
    ],
)
def test_models_have_the_published_sizes(name: str, params: int) -> None:
    model = build_model(name, (1, 28, 28), 10)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_seed_makes_weights_reproducible() -> None:
    a = build_model("dp-cnn", (1, 28, 28), 10, seed=1).state_dict()
    b = build_model("dp-cnn", (1, 28, 28), 10, seed=1).state_dict()
    c = build_model("dp-cnn", (1, 28, 28), 10, seed=2).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_small_images_work_for_cnn_and_fail_clearly_for_dp_cnn() -> None:
    assert build_model("fedavg-cnn", (1, 8, 8), 10)(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError, match="16x16"):
        build_model("dp-cnn", (1, 8, 8), 10)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="fedavg-cnn"):
        build_model("resnet", (1, 28, 28), 10)


def test_onnx_export_is_single_file_dynamic_batch_with_normalization(tmp_path: Path) -> None:
    model = build_model("dp-cnn", (1, 28, 28), 10, seed=0).eval()
    path = export_onnx(model, (1, 28, 28), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no external data, no temp
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7, 64):
        x = np.random.default_rng(batch).random((batch, 1, 28, 28), dtype=np.float32)
        (logits,) = session.run(None, {"input": x})
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
        assert logits.shape == (batch, 10)
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
