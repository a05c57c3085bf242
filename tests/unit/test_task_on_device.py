"""A device names its own task in agent.toml; the ClientApp loads that and checks the plan's."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w

from edgeai.agent.config import load_agent_config
from edgeai.agent.startup import check_named_files
from edgeai.agent.supernode import node_config
from edgeai.errors import ConfigError
from edgeai.flower.client_app import plan_task
from edgeai.flower.plan import ClientPlan, DataConfig, TrainingConfig
from edgeai.flower.tasks import TaskMismatchError
from edgeai.privacy.config import PrivacyConfig
from edgeai.task import TaskConfig, load_task

TASK_MODULE = """
from edgeai.task.builtin.regression import RegressionTask

class MyRegression(RegressionTask):
    pass
"""


def _agent(tmp_path: Path, task: dict[str, object]) -> Path:
    (tmp_path / "data.npz").write_bytes(b"")
    config = {
        "node": "dev-1",
        "profile": "rpi5",
        "data": "data.npz",
        "task": task,
        "federation": {"superlink": "127.0.0.1:9092", "insecure": True},
        "discovery": False,
    }
    path = tmp_path / "agent.toml"
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


def test_a_ref_is_found_beside_agent_toml_and_reaches_the_node_config(tmp_path: Path) -> None:
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "mine.py").write_text(TASK_MODULE, encoding="utf-8")
    cfg = load_agent_config(_agent(tmp_path, {"ref": "mine:MyRegression", "path": "tasks"}))
    assert cfg.task is not None
    assert cfg.task.path == str(tmp_path / "tasks")
    check_named_files(cfg)  # the module is there
    values = node_config(cfg)
    assert TaskConfig.model_validate_json(values["task-config"]) == cfg.task


def test_a_ref_whose_module_is_nowhere_is_refused_at_start(tmp_path: Path) -> None:
    cfg = load_agent_config(_agent(tmp_path, {"ref": "missing_module:Task"}))
    with pytest.raises(ConfigError, match="module 'missing_module' is neither in"):
        check_named_files(cfg)


def _plan(task: TaskConfig) -> ClientPlan:
    loaded = load_task(task)
    return ClientPlan(
        task=task,
        task_name=loaded.name,
        task_version=loaded.version,
        data=DataConfig(),
        training=TrainingConfig(),
        privacy=PrivacyConfig(),
        num_rounds=1,
    )


def test_the_device_loads_its_own_task_and_refuses_another(tmp_path: Path) -> None:
    plan = _plan(TaskConfig(name="regression"))
    own = TaskConfig(name="regression").model_dump_json(exclude_defaults=True)
    assert plan_task(plan, {"task-config": own}).name == "regression"
    other = TaskConfig(name="mnist").model_dump_json(exclude_defaults=True)
    with pytest.raises(TaskMismatchError, match="install the same version of the task"):
        plan_task(plan, {"task-config": other})
