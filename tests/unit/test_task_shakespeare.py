"""The built-in ``shakespeare`` task: roles, windows, partition, export, Opacus."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.quantization.shape_inference import quant_pre_process
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator

from edgeai.errors import ConfigError
from edgeai.task import Task, TaskConfig, load_task
from edgeai.task.builtin.shakespeare import (
    WINDOW,
    CharLSTM,
    ShakespeareTask,
    build_corpus,
    parse_roles,
)
from edgeai.task.validate import validate_task


@pytest.fixture(scope="module")
def task() -> ShakespeareTask:
    return ShakespeareTask(hidden=32, stride=4, val_windows=500)


def role_of(task: ShakespeareTask, starts: np.ndarray) -> np.ndarray:
    return np.searchsorted(task.corpus.offsets, starts, side="right") - 1


def test_parse_roles_splits_speeches_at_name_lines_after_blank_lines() -> None:
    text = (
        "First Citizen:\nBefore we proceed:\nhear me.\n\nAll:\nSpeak.\n\n"
        "First Citizen:\nYou are all resolved?\n"
    )
    roles = parse_roles(text)
    # "Before we proceed:" follows a speaker line, not a blank one: it is speech.
    assert roles == {
        "First Citizen": "Before we proceed:\nhear me.\nYou are all resolved?",
        "All": "Speak.",
    }


def test_corpus_ranks_roles_by_size_and_encodes_with_the_text_vocabulary() -> None:
    corpus = build_corpus("A:\nxx\n\nB:\nxyz\n")
    assert corpus.names == ("B", "A")
    assert "".join(corpus.vocab[i] for i in corpus.codes) == "xyzxx"
    assert corpus.offsets.tolist() == [0, 3, 5]


def test_shipped_text_has_the_roles_of_the_paper_and_leaf(task: ShakespeareTask) -> None:
    corpus = task.corpus
    lengths = [corpus.role_length(r) for r in range(len(corpus.names))]
    assert len(corpus.names) == 309
    assert sum(n >= 2000 for n in lengths) == 99
    assert len(corpus.vocab) == 65
    assert lengths == sorted(lengths, reverse=True)
    assert corpus.names[0] == "GLOUCESTER"


def test_samples_are_int64_windows_and_the_next_character(task: ShakespeareTask) -> None:
    train, val = task.datasets()
    x, y = train[10]
    assert x.shape == (WINDOW,)
    assert x.dtype == y.dtype == torch.int64
    assert y.shape == ()
    start = int(train.starts[10])
    assert torch.equal(
        x, torch.from_numpy(task.corpus.codes[start : start + WINDOW].astype(np.int64))
    )
    assert int(y) == task.corpus.codes[start + WINDOW]
    ids, targets = val.arrays(np.arange(3))
    assert torch.equal(ids[1], val[1][0])
    assert torch.equal(targets, torch.stack([val[i][1] for i in range(3)]))
    assert len(val) == 500


def test_windows_never_cross_a_role_boundary(task: ShakespeareTask) -> None:
    train, val = task.datasets()
    for data in (train, val):
        assert np.array_equal(role_of(task, data.starts), role_of(task, data.starts + WINDOW))


def test_held_out_roles_never_train(task: ShakespeareTask) -> None:
    train, val = task.datasets()
    train_roles = set(role_of(task, train.starts).tolist())
    val_roles = set(role_of(task, val.starts).tolist())
    assert train_roles.isdisjoint(val_roles)
    assert all(task.held_out(r) for r in val_roles)
    assert not any(task.held_out(r) for r in train_roles)
    assert len(val_roles) >= 20
    # Held-out roles span the ranking: some big speakers and some small ones.
    assert min(val_roles) < 10
    assert max(val_roles) > 150


def test_partition_gives_each_client_one_whole_role(task: ShakespeareTask) -> None:
    train, _ = task.datasets()
    parts = task.partition(100, seed=3)
    assert len(parts) == 100
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat))
    for part in parts:
        assert len(set(role_of(task, train.starts[part]).tolist())) == 1
    assert task.partition(100, seed=3) == parts
    other = task.partition(100, seed=4)
    assert other != parts
    assert sorted(map(tuple, other)) == sorted(map(tuple, parts))
    # The clients hold the roles with the most windows.
    sizes = sorted(map(len, parts))
    assert sizes[0] >= sorted(map(len, task.partition(101, seed=0)))[0]


def test_partition_refuses_more_clients_than_roles(task: ShakespeareTask) -> None:
    with pytest.raises(ConfigError, match="training roles"):
        task.partition(1000, seed=0)


def test_model_maps_windows_to_vocabulary_logits(task: ShakespeareTask) -> None:
    model = task.build_model()
    x = task.example_input()
    assert x.dtype == torch.int64
    assert x.shape == (4, WINDOW)
    out = model(x)
    assert out.shape == (4, 65)
    _, val = task.datasets()
    ids, targets = val.arrays(np.arange(8))
    assert task.loss(model(ids), targets).ndim == 0
    assert list(task.metrics(model(ids), targets)) == ["accuracy"]
    assert isinstance(task, Task)


def test_bad_options_name_the_option() -> None:
    with pytest.raises(ConfigError, match="hidden"):
        ShakespeareTask(hidden=0)
    with pytest.raises(ConfigError, match="dp_lstm"):
        ShakespeareTask(dp_lstm="yes")  # type: ignore[arg-type]


def test_onnx_export_matches_torch_with_dynamic_batch_and_quantizes(
    task: ShakespeareTask, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = task.build_model().eval()
    path = tmp_path / "model.onnx"
    program = torch.onnx.export(
        model,
        (task.example_input(),),
        dynamo=True,
        input_names=["ids"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
    )
    assert program is not None
    program.save(str(path))
    proto = onnx.load(str(path))
    for key, value in task.onnx_metadata().items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(path))

    vocab = json.loads(
        {p.key: p.value for p in onnx.load(str(path)).metadata_props}["edgeai.vocab"]
    )
    assert vocab == list(task.corpus.vocab)
    _, val = task.datasets()
    ids, _ = val.arrays(np.arange(37))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(int64)"
    got = session.run(None, {inp.name: ids.numpy()})[0]
    with torch.no_grad():
        want = model(ids).numpy()
    assert got.shape == (37, 65)
    assert np.abs(got - want).max() <= 1e-4

    # ORT's pre-processing folds the exporter's gate reordering into the LSTM's weight
    # initializers; only then does dynamic quantization reach the LSTM.
    folded, int8 = tmp_path / "model.pre.onnx", tmp_path / "model.int8.onnx"
    quant_pre_process(str(path), str(folded), skip_symbolic_shape=True)
    quantize_dynamic(str(folded), str(int8), weight_type=QuantType.QInt8)
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "DynamicQuantizeLSTM" in ops
    assert "LSTM" not in ops
    assert int8.stat().st_size < 0.35 * path.stat().st_size
    quantized = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"])
    q_out = quantized.run(None, {inp.name: ids.numpy()})[0]
    assert q_out.shape == (37, 65)
    assert np.isfinite(q_out).all()


def test_dp_variant_passes_opacus_validation_and_loads_plain_weights() -> None:
    dp_task = ShakespeareTask(hidden=16, stride=64, val_windows=100, dp_lstm=True)
    plain_task = ShakespeareTask(hidden=16, stride=64, val_windows=100)
    dp_model, plain = dp_task.build_model(), plain_task.build_model()
    assert ModuleValidator.validate(dp_model, strict=False) == []
    assert ModuleValidator.validate(plain, strict=False) != []  # nn.LSTM: Opacus asks for DPLSTM
    assert isinstance(ModuleValidator.fix(plain), CharLSTM)
    # Same keys in the same order: weights travel as the same arrays with or without DP,
    # and DP-trained weights export through the nn.LSTM model.
    assert list(dp_model.state_dict()) == list(plain.state_dict())
    dp_model.load_state_dict(plain.state_dict())
    x = plain_task.example_input()
    with torch.no_grad():
        assert torch.allclose(dp_model(x), plain(x), atol=1e-5)


def test_one_dp_sgd_step_trains_the_dp_variant() -> None:
    dp_task = ShakespeareTask(hidden=16, stride=64, val_windows=100, dp_lstm=True)
    torch.manual_seed(0)
    model = dp_task.build_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, _ = dp_task.datasets()
    subset = torch.utils.data.Subset(train, range(64))
    loader = torch.utils.data.DataLoader(subset, batch_size=16)
    engine = PrivacyEngine()
    private, optimizer, private_loader = engine.make_private(
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
    )
    for ids, target in private_loader:
        if len(target) == 0:
            continue
        optimizer.zero_grad()
        dp_task.loss(private(ids), target).backward()
        optimizer.step()
    after = model.state_dict()
    assert list(after) == list(before)
    assert not torch.equal(after["lstm.weight_ih_l0"], before["lstm.weight_ih_l0"])
    assert engine.get_epsilon(delta=1e-5) > 0


def test_built_in_name_loads_and_validates_with_and_without_dp() -> None:
    options = {"hidden": 16, "stride": 64, "val_windows": 200}
    plain = load_task(TaskConfig(name="shakespeare", options=options))
    assert isinstance(plain, ShakespeareTask)
    validate_task(plain, dp_enabled=False)
    with pytest.raises(ConfigError, match="lstm"):
        validate_task(plain, dp_enabled=True)
    dp = load_task(TaskConfig(name="shakespeare", options={**options, "dp_lstm": True}))
    validate_task(dp, dp_enabled=True)
    with pytest.raises(ConfigError, match="hidden"):
        load_task(TaskConfig(name="shakespeare", options={"hidden": 0}))
