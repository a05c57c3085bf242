"""edgeai checkpoints: round trip, clear errors, and `edgeai compile` taking one as its model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from edgeai.cli import app
from edgeai.errors import DataError
from edgeai.models import build_model
from edgeai.models.checkpoint import (
    checkpoint_from_state,
    export_checkpoint,
    is_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("dp-cnn-tiny", (1, 28, 28), 10, seed=3)
    ckpt = checkpoint_from_state(
        "dp-cnn-tiny",
        (1, 28, 28),
        10,
        model.state_dict(),
        round_=4,
        provenance={"edgeai.epsilon": 1.5, "edgeai.experiment": "ckpt-test"},
    )
    return save_checkpoint(ckpt, tmp_path_factory.mktemp("ckpt") / "round-4.npz")


def test_round_trip_keeps_weights_order_and_provenance(checkpoint: Path) -> None:
    ckpt = load_checkpoint(checkpoint)
    model = build_model("dp-cnn-tiny", (1, 28, 28), 10, seed=3)
    assert ckpt.names == tuple(model.state_dict())
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(ckpt.state()[name], value.numpy())
    assert (ckpt.round, ckpt.provenance["edgeai.epsilon"]) == (4, 1.5)
    assert is_checkpoint(checkpoint)


def test_plain_npz_and_garbage_are_not_checkpoints(tmp_path: Path) -> None:
    data = tmp_path / "data.npz"
    np.savez(data, X=np.zeros((2, 28, 28), np.uint8), y=np.zeros(2, np.int64))
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    assert not is_checkpoint(data)
    assert not is_checkpoint(garbage)
    with pytest.raises(DataError, match="not an edgeai checkpoint"):
        load_checkpoint(data)
    with pytest.raises(DataError, match="unreadable checkpoint"):
        load_checkpoint(garbage)


def test_export_matches_the_torch_model(checkpoint: Path, tmp_path: Path) -> None:
    path = export_checkpoint(load_checkpoint(checkpoint), tmp_path / "m.onnx")
    model = build_model("dp-cnn-tiny", (1, 28, 28), 10, seed=3).eval()
    x = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_weights_that_do_not_fit_the_model_are_a_clear_error(tmp_path: Path) -> None:
    state = build_model("dp-cnn-tiny", (1, 28, 28), 10).state_dict()
    bad = checkpoint_from_state("dp-cnn", (1, 28, 28), 10, state)
    with pytest.raises(DataError, match="do not fit model 'dp-cnn'"):
        export_checkpoint(bad, tmp_path / "m.onnx")


def test_compile_takes_a_checkpoint(
    checkpoint: Path, tiny_model: tuple[Path, Path], tmp_path: Path
) -> None:
    _, calibration = tiny_model
    out = tmp_path / "bundle"
    result = runner.invoke(
        app,
        [
            "compile",
            str(checkpoint),
            "--profile",
            "rpi4",
            "--calibration",
            str(calibration),
            "--out",
            str(out),
            "--model-version",
            "r4",
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == {"name": "ckpt-test", "version": "r4"}
    assert manifest["source"]["format"] == "edgeai-checkpoint"
    assert manifest["source"]["path"] == str(checkpoint.resolve())
    assert (manifest["round"], manifest["epsilon"]) == (4, 1.5)
    assert sorted(p.name for p in out.iterdir()) == ["golden.npz", "manifest.json", "model.onnx"]


def test_compile_of_a_mismatched_checkpoint_exits_2_and_leaves_nothing(
    tiny_model: tuple[Path, Path], tmp_path: Path
) -> None:
    state = build_model("dp-cnn-tiny", (1, 28, 28), 10).state_dict()
    bad = save_checkpoint(
        checkpoint_from_state("dp-cnn", (1, 28, 28), 10, state), tmp_path / "b.npz"
    )
    out = tmp_path / "bundle"
    result = runner.invoke(
        app,
        ["compile", str(bad), "-p", "rpi4", "--calibration", str(tiny_model[1]), "-o", str(out)],
    )
    assert result.exit_code == 2
    assert "do not fit model" in result.output
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]
