"""The warm SuperExec's executor: forking, reaping, capacity, fallback, the child's exit."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from flwr.supercore.constant import TaskType
from flwr.supercore.exit import add_exit_handler
from flwr.supercore.exit import exit_handler as flwr_exit_handler
from flwr.supercore.superexec import run_superexec as flwr_run_superexec
from flwr.supercore.superexec.executor import ExecutionSpec, LaunchResult, LaunchResultStatus

from edgeai.agent.warm_child import child_exit_code, child_main, describe_status
from edgeai.agent.warm_exec import (
    DEFAULT_PRELOAD,
    ForkExecutor,
    _executor_injected,
    parse_args,
)
from tests.support.clock import FakeClock


def spec(task_id: int = 1, task_type: TaskType = TaskType.CLIENT_APP) -> ExecutionSpec:
    """An execution spec as Flower's plugin builds it."""
    return ExecutionSpec(
        task_type=task_type,
        runtime_api_address="127.0.0.1:9094",
        token="t0ken",  # noqa: S106  (a made-up task token)
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=os.getpid(),
        suppress_output=False,
        task_id=task_id,
    )


@dataclass
class FakeOS:
    """fork/waitpid in memory: children exit when the test says so."""

    next_pid: int = 100
    exited: dict[int, int] = field(default_factory=dict)
    waited: list[int] = field(default_factory=list)

    def fork(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def waitpid(self, pid: int, options: int) -> tuple[int, int]:
        self.waited.append(pid)
        if pid in self.exited:
            return pid, self.exited.pop(pid)
        assert options == os.WNOHANG, "a blocking wait on a running child would hang"
        return 0, 0


@dataclass
class RecordingExecutor:
    """The fallback: records what it was asked to run."""

    launched: list[ExecutionSpec] = field(default_factory=list)
    reconciled: int = 0
    closed: bool = False

    def get_eligible_capacity(
        self, supported_task_types: set[TaskType], **_: object
    ) -> tuple[set[TaskType], set[str]]:
        return supported_task_types, set()

    def wait_for_capacity(self, task_type: TaskType | None = None, **_: object) -> None:
        del task_type

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        self.launched.append(spec)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        self.reconciled += 1

    def close(self) -> None:
        self.closed = True


def executor(fake: FakeOS, **kw: object) -> tuple[ForkExecutor, RecordingExecutor]:
    fallback = RecordingExecutor()
    clock = FakeClock()
    ex = ForkExecutor(
        fork=fake.fork,
        waitpid=fake.waitpid,
        fallback=fallback,
        clock=clock,
        sleep=clock.sleep,
        **kw,  # type: ignore[arg-type]
    )
    return ex, fallback


def test_launch_forks_a_child_per_clientapp_task_and_reconcile_reaps_it() -> None:
    fake = FakeOS()
    ex, fallback = executor(fake)
    assert ex.launch(spec(7)).status == LaunchResultStatus.ACCEPTED
    assert ex.children == {101: 7}
    ex.reconcile()
    assert ex.children == {101: 7}  # still running
    fake.exited[101] = 0
    ex.reconcile()
    assert ex.children == {}
    assert ex.exits == [(101, 7, 0)]
    assert fallback.launched == []
    assert fallback.reconciled == 2


def test_other_task_types_go_to_the_fallback_executor() -> None:
    fake = FakeOS()
    ex, fallback = executor(fake)
    ex.launch(spec(3, TaskType.AGENT_APP))
    assert [s.task_id for s in fallback.launched] == [3]
    assert ex.children == {}


def test_no_capacity_while_max_tasks_children_run() -> None:
    fake = FakeOS()
    ex, _ = executor(fake, max_tasks=2)
    types = {TaskType.CLIENT_APP, TaskType.AGENT_APP}
    assert ex.get_eligible_capacity(types) == (types, set())
    ex.launch(spec(1))
    ex.launch(spec(2))
    assert ex.get_eligible_capacity(types) == (set(), set())
    fake.exited[101] = 0
    ex.wait_for_capacity()
    assert ex.get_eligible_capacity(types) == (types, set())


def test_a_failed_fork_is_a_failed_launch() -> None:
    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    ex = ForkExecutor(fork=no_fork, fallback=RecordingExecutor())
    result = ex.launch(spec())
    assert result.status == LaunchResultStatus.FAILED
    assert "fork failed" in (result.message or "")


def test_close_reaps_children_that_finish_in_grace_and_leaves_the_rest() -> None:
    fake = FakeOS()
    ex, fallback = executor(fake, grace_s=1.0)
    ex.launch(spec(1))
    ex.launch(spec(2))
    fake.exited[101] = 0
    ex.close()
    assert ex.exits == [(101, 1, 0)]
    # 102 was never signalled: a signalled ClientApp leaves its SuperNode without a reply.
    assert ex.children == {}
    assert fallback.closed


def test_max_tasks_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_tasks"):
        ForkExecutor(max_tasks=0, fallback=RecordingExecutor())


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (None, 0),
        (SystemExit(0), 0),
        (SystemExit(None), 0),
        (SystemExit(3), 3),
        (SystemExit("message"), 1),
        (KeyboardInterrupt(), 1),
        (RuntimeError("boom"), 1),
    ],
)
def test_child_exit_code(exc: BaseException | None, code: int) -> None:
    assert child_exit_code(exc) == code


def test_describe_status() -> None:
    assert describe_status(3 << 8) == "exit 3"
    assert describe_status(signal.SIGKILL) == "killed by SIGKILL"


def _forked(ex: ForkExecutor, deadline_s: float = 20.0) -> tuple[int, int, int]:
    end = time.monotonic() + deadline_s
    while ex.children and time.monotonic() < end:
        ex.reconcile()
        time.sleep(0.01)
    assert not ex.children, "the child did not exit"
    return ex.exits[-1]


def test_a_real_child_runs_the_task_and_is_reaped(tmp_path: Path) -> None:
    out = tmp_path / "ran"

    def task(s: ExecutionSpec) -> None:
        # What the child inherits that it must not run: the parent's Flower exit handlers.
        left = len(flwr_exit_handler.registered_exit_handlers)
        out.write_text(f"{s.token} {left} {os.getppid()}")
        raise SystemExit(3)

    add_exit_handler(lambda: None)  # the parent's, as run_superexec registers them
    try:
        ex = ForkExecutor(child=lambda s: child_main(s, task), fallback=RecordingExecutor())
        ex.launch(spec(9))
        pid, task_id, status = _forked(ex)
    finally:
        flwr_exit_handler.registered_exit_handlers.pop()
    assert (task_id, os.waitstatus_to_exitcode(status)) == (9, 3)
    assert out.read_text() == f"t0ken 0 {os.getpid()}"
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # already reaped: no zombie left


def test_a_real_child_that_raises_exits_1(tmp_path: Path) -> None:
    def task(_s: ExecutionSpec) -> None:
        raise RuntimeError("the ClientApp failed")

    ex = ForkExecutor(child=lambda s: child_main(s, task), fallback=RecordingExecutor())
    ex.launch(spec())
    _, _, status = _forked(ex)
    assert os.waitstatus_to_exitcode(status) == 1


def test_run_superexec_gets_our_executor_and_its_own_back() -> None:
    ours = ForkExecutor(fallback=RecordingExecutor())
    original = flwr_run_superexec.get_executor  # type: ignore[attr-defined]
    with _executor_injected(ours):
        assert flwr_run_superexec.get_executor("subprocess") is ours  # type: ignore[attr-defined]
    assert flwr_run_superexec.get_executor is original  # type: ignore[attr-defined]


def test_parse_args() -> None:
    args = parse_args(["--runtime-api-address", "127.0.0.1:9094", "--insecure"])
    assert args.preload == DEFAULT_PRELOAD
    assert args.max_tasks == 4
    assert args.poll_s is None
    custom = parse_args(
        ["--runtime-api-address", "h:1", "--root-certificates", "ca.pem", "--preload", "json"]
    )
    assert custom.preload == ("json",)
    assert custom.root_certificates == "ca.pem"


@pytest.mark.parametrize(
    "argv",
    [
        ["--runtime-api-address", "h:1"],  # neither --insecure nor --root-certificates
        ["--runtime-api-address", "h:1", "--insecure", "--max-tasks", "0"],
        ["--runtime-api-address", "h:1", "--insecure", "--poll-s", "0"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv)
    assert exc.value.code == 2
