"""A bad task fails ``edgeai simulate`` with exit 2 and one clear line, before Ray starts."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support.cli import simulate_cli

pytestmark = pytest.mark.integration

EXPERIMENT = """
name = "bad"
[task]
ref = "{ref}"
[federation]
num_clients = 2
rounds = 1
[privacy]
enabled = {dp}
target_epsilon = 8.0
"""

# A module of tasks, each wrong in one way (the right one is the base to break).
TASKS = """
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset
from edgeai.task import Task

class Good(Task):
    name = "good"
    channels_last = False
    classes = 4
    def __init__(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(64, 3, 16, 16, generator=g)
        if self.channels_last:
            x = x.permute(0, 2, 3, 1).contiguous()
        self.data = TensorDataset(x, torch.randint(0, 4, (64,), generator=g) * (self.classes // 4))
    def build_model(self):
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    def datasets(self):
        return self.data, self.data
    def loss(self, output, target):
        return F.cross_entropy(output, target)
    def metrics(self, output, target):
        return {"accuracy": float((output.argmax(1) == target).float().mean())}
    def example_input(self):
        return self.data.tensors[0][:2]
    def labels(self):
        return self.data.tensors[1].tolist()

class FailsOnExample(Good):
    def example_input(self):
        return torch.rand(2, 5)

class LabelsTooBig(Good):
    classes = 12  # labels 0, 3, 6, 9 for a model of 4 outputs

class ChannelsLast(Good):
    channels_last = True

class WithBatchNorm(Good):
    def build_model(self):
        return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))

not_a_task = 42

class NotATask:
    pass
"""


def simulate(tmp_path: Path, ref: str, dp: bool = False) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tasks_under_test.py").write_text(textwrap.dedent(TASKS))
    exp = tmp_path / "exp.toml"
    exp.write_text(EXPERIMENT.format(ref=ref, dp="true" if dp else "false"))
    return simulate_cli(exp, tmp_path / "out")


@pytest.mark.parametrize(
    ("ref", "dp", "expected"),
    [
        ("no_such_module:Task", False, "cannot import module 'no_such_module'"),
        ("tasks_under_test:NotATask", False, "not a subclass of edgeai.task.Task"),
        ("tasks_under_test:not_a_task", False, "is a int, not a Task"),
        ("tasks_under_test:FailsOnExample", False, "the model on example_input() (2, 5)"),
        ("tasks_under_test:LabelsTooBig", False, "labels run from 0 to 9 but the model outputs 4"),
        ("tasks_under_test:ChannelsLast", False, "channels-last (N, H, W, C) = (2, 16, 16, 3)"),
        ("tasks_under_test:WithBatchNorm", True, "layer 1 (BatchNorm2d)"),
    ],
)
def test_a_bad_task_exits_2_before_anything_starts(
    tmp_path: Path, ref: str, dp: bool, expected: str
) -> None:
    done = simulate(tmp_path, ref, dp)
    assert done.returncode == 2, done.stderr + done.stdout
    message = " ".join(done.stderr.split())
    assert expected in message, message
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()  # nothing ran: no results, no Ray


def test_the_message_names_the_fix(tmp_path: Path) -> None:
    message = " ".join(simulate(tmp_path, "tasks_under_test:ChannelsLast").stderr.split())
    assert "transpose(0, 3, 1, 2)" in message
    message = " ".join(simulate(tmp_path, "tasks_under_test:WithBatchNorm", True).stderr.split())
    assert "GroupNorm" in message
    assert "ModuleValidator.fix" in message


def test_the_good_task_passes_the_checks(tmp_path: Path) -> None:
    from edgeai.task import TaskConfig, load_task  # noqa: PLC0415
    from edgeai.task.validate import validate_task  # noqa: PLC0415

    (tmp_path / "tasks_under_test.py").write_text(textwrap.dedent(TASKS))
    task = load_task(TaskConfig(ref="tasks_under_test:Good", path=str(tmp_path)))
    validate_task(task, dp_enabled=True)
