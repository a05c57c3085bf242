"""The built-in ``regression`` task: diabetes data, standardization inside the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edgeai.errors import ConfigError
from edgeai.task import Task, TaskConfig, load_task
from edgeai.task.builtin.regression import RegressionTask, load_diabetes_arrays
from edgeai.task.validate import validate_task


@pytest.fixture(scope="module")
def task() -> RegressionTask:
    return RegressionTask(hidden=16)


def test_splits_are_disjoint_float32_pairs(task: RegressionTask) -> None:
    train, val = task.datasets()
    assert len(train) + len(val) == 442
    assert len(val) == 88
    x, y = train[0]
    assert x.dtype == y.dtype == torch.float32
    assert x.shape == (10,)
    assert y.shape == (1,)
    rows = {tuple(train[i][0].tolist()) for i in range(len(train))}
    assert not any(tuple(val[i][0].tolist()) in rows for i in range(len(val)))
    assert task.labels() is None
    assert task.partition(4, 0) is None
    assert isinstance(task, Task)


def test_features_are_raw_and_the_model_standardizes_them(task: RegressionTask) -> None:
    x, _ = load_diabetes_arrays()
    assert x[:, 0].mean() > 40  # ages in years, not scikit-learn's scaled default
    model = task.build_model()
    train, _ = task.datasets()
    xs = torch.stack([train[i][0] for i in range(len(train))])
    z = model.scale_in(xs)
    assert torch.allclose(z.mean(0), torch.zeros(10), atol=1e-4)
    assert torch.allclose(z.std(0), torch.ones(10), atol=1e-4)
    # The statistics are buffers (they travel with the weights), never trained.
    names = {n for n, _ in model.named_parameters()}
    assert not any("scale" in n for n in names)
    assert {"scale_in.mean", "scale_in.std", "scale_out.mean", "scale_out.std"} <= set(
        model.state_dict()
    )


def test_an_untrained_model_predicts_near_the_training_mean(task: RegressionTask) -> None:
    torch.manual_seed(0)
    out = task.build_model()(task.example_input())
    assert out.shape == (4, 1)
    assert out.dtype == torch.float32
    assert (out - task.y_mean).abs().max() < 2 * task.y_std


def test_metrics_are_in_target_units_with_neg_mae_first(task: RegressionTask) -> None:
    target = torch.tensor([[100.0], [200.0]])
    output = torch.tensor([[110.0], [170.0]])
    metrics = task.metrics(output, target)
    assert list(metrics) == ["neg_mae", "neg_rmse", "r2"]
    assert metrics["neg_mae"] == pytest.approx(-20.0)
    assert metrics["neg_rmse"] == pytest.approx(-np.sqrt((100 + 900) / 2))
    assert metrics["r2"] == pytest.approx(1 - 500 / task.y_var)
    assert float(task.loss(output, target)) == pytest.approx(500 / task.y_var)
    perfect = task.metrics(target, target)
    assert perfect["neg_mae"] == 0.0
    assert perfect["r2"] == 1.0


def test_training_beats_predicting_the_mean(task: RegressionTask) -> None:
    torch.manual_seed(0)
    model = task.build_model()
    train, val = task.datasets()
    xs, ys = train.tensors  # type: ignore[attr-defined]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        task.loss(model(xs), ys).backward()
        opt.step()
    vx, vy = val.tensors  # type: ignore[attr-defined]
    with torch.no_grad():
        metrics = task.metrics(model(vx), vy)
    assert metrics["r2"] > 0.3


def test_onnx_export_carries_the_standardization(task: RegressionTask, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = task.build_model().eval()
    path = tmp_path / "model.onnx"
    program = torch.onnx.export(
        model,
        (task.example_input(),),
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    assert program is not None
    program.save(str(path))
    raw, _ = load_diabetes_arrays()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: raw[:50]})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(raw[:50])).numpy()
    assert got.shape == (50, 1)
    assert np.abs(got - want).max() <= 1e-4


def test_bad_options_name_the_option() -> None:
    with pytest.raises(ConfigError, match="validation_fraction"):
        RegressionTask(validation_fraction=1.5)
    with pytest.raises(ConfigError, match="hidden"):
        RegressionTask(hidden=-1)


def test_built_in_name_loads_and_validates_with_dp() -> None:
    task = load_task(TaskConfig(name="regression", options={"hidden": 8}))
    assert isinstance(task, RegressionTask)
    validate_task(task, dp_enabled=True)
