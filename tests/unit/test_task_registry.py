"""The task registry, the [task] table, and the legacy [model] form as the mnist task."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgeai.errors import ConfigError
from edgeai.flower.experiment import load_experiment
from edgeai.task import Task, TaskConfig, builtin_names, load_task, register
from edgeai.task.builtin.mnist import MnistTask

ROOT = Path(__file__).resolve().parents[2]


def test_the_builtins_are_registered() -> None:
    assert {"mnist", "shakespeare", "regression"} <= set(builtin_names())


def test_a_config_names_exactly_one_task() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TaskConfig()
    with pytest.raises(ValueError, match="exactly one"):
        TaskConfig(name="mnist", ref="m:T")
    with pytest.raises(ValueError, match=r"module\.path:attribute"):
        TaskConfig(ref="no-colon")


def _other_factory() -> Task:
    return MnistTask()


def test_registering_another_factory_under_a_taken_name_fails() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register("mnist", _other_factory)
    register("mnist", MnistTask)  # the same one again is harmless


def test_options_reach_the_constructor_and_bad_ones_are_named() -> None:
    task = load_task(TaskConfig(name="mnist", options={"model": "fedavg-2nn"}))
    assert isinstance(task, MnistTask)
    assert task.model_name == "fedavg-2nn"
    with pytest.raises(ConfigError, match="do not fit"):
        load_task(TaskConfig(name="mnist", options={"no_such_option": 1}))
    with pytest.raises(ConfigError, match="unknown model"):
        load_task(TaskConfig(name="mnist", options={"model": "resnet-9000"}))


def test_a_ref_imports_from_its_folder_and_may_be_a_factory_or_an_instance(
    tmp_path: Path,
) -> None:
    (tmp_path / "my_tasks_for_registry.py").write_text(
        "from edgeai.task.builtin.mnist import MnistTask\n"
        "def make(model='dp-cnn-tiny'):\n    return MnistTask(model=model)\n"
        "instance = MnistTask()\n"
    )
    made = load_task(TaskConfig(ref="my_tasks_for_registry:make", path=str(tmp_path)))
    assert isinstance(made, Task)
    assert getattr(made, "model_name", None) == "dp-cnn-tiny"
    same = load_task(TaskConfig(ref="my_tasks_for_registry:instance", path=str(tmp_path)))
    assert isinstance(same, MnistTask)
    with pytest.raises(ConfigError, match="instance"):
        load_task(
            TaskConfig(ref="my_tasks_for_registry:instance", path=str(tmp_path), options={"a": 1})
        )


@pytest.mark.parametrize(
    "path", sorted((ROOT / "simulations").glob("*.toml")), ids=lambda p: p.stem
)
def test_every_shipped_experiment_loads_unchanged(path: Path) -> None:
    exp = load_experiment(path)
    assert exp.task_config.label in builtin_names()


def test_the_model_table_is_the_mnist_task_with_the_data_options() -> None:
    exp = load_experiment(ROOT / "simulations" / "quickstart-tanh-cnn.toml")
    assert exp.task_config == TaskConfig(
        name="mnist",
        options={"model": "dp-cnn-tiny", "dataset": "mnist", "validation_fraction": 0.2,
                 "split_seed": 0},
    )  # fmt: skip


def test_a_ref_is_resolved_beside_the_experiment_and_data_keys_are_refused(
    tmp_path: Path,
) -> None:
    exp_path = tmp_path / "exp.toml"
    body = '[task]\nref = "task:CustomTask"\n[federation]\nnum_clients = 2\nrounds = 1\n'
    exp_path.write_text('name = "x"\n' + body)
    exp = load_experiment(exp_path)
    assert exp.task_config.path == str(tmp_path.resolve())
    exp_path.write_text('name = "x"\n[data]\ndataset = "digits"\n' + body)
    with pytest.raises(ConfigError, match="applies to \\[model\\] only"):
        load_experiment(exp_path)
    exp_path.write_text('name = "x"\n[federation]\nnum_clients = 2\nrounds = 1\n')
    with pytest.raises(ConfigError, match="give the task"):
        load_experiment(exp_path)
