"""The ``vmap`` backend: a Flower ``Grid`` whose nodes are all trained at once, in-process.

The ServerApp, its one round loop and its strategy run unchanged on this grid (as on
Flower's ``InMemoryGrid`` under the Simulation Engine); only delivery differs. A round's
train messages are answered together: the clients' copies of the model are stacked and
trained with ``torch.func`` (:mod:`edgeai.simulation.batched`), and each reply carries
what the ClientApp's would (weights, ``num-examples``, ``train-loss``, ``steps``, DP
report). With DP-SGD every virtual device keeps its privacy ledger as under Ray: checked
before training (a device past its budget refuses with ``BUDGET_EXHAUSTED``), written after.
No Ray is imported.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid

from edgeai.errors import ConfigError
from edgeai.flower.attacks import AttackPlan
from edgeai.flower.client_app import BUDGET_EXHAUSTED, PLAN_KEY, Device, device_of
from edgeai.flower.plan import ClientPlan, TrainingConfig
from edgeai.flower.sampling import IDENTIFY, IDENTITY_KEY, identity_of
from edgeai.flower.tasks import load_config, partitions, task_datasets
from edgeai.flower.training import plan_dp, seeded_generator
from edgeai.privacy.ledger import BudgetExhaustedError, PrivacyLedger
from edgeai.simulation.batched import (
    BatchedTrainer,
    ClientJob,
    DPSetting,
    plain_schedule,
    poisson_schedule,
)
from edgeai.task.batches import batch_of, size_of

# Clients trained together at most: bounds memory (stacked weights, per-sample gradients).
CHUNK = 64
FIRST_NODE_ID = 1_000  # node ids are arbitrary; partition p is node FIRST_NODE_ID + p


class LocalGrid(Grid):
    """A grid in this process: the run and Flower's deprecated ``create_message``."""

    _run: Any = None

    def set_run(self, run: Any) -> None:  # noqa: D102
        self._run = run

    @property
    def run(self) -> Any:  # noqa: D102
        return self._run

    def create_message(  # noqa: D102  (Flower's signature)
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)


class VmapGrid(LocalGrid):
    """An in-process grid of ``num_clients`` virtual nodes, trained client-parallel."""

    def __init__(self, num_clients: int, *, threads: int | None = None, chunk: int = CHUNK) -> None:
        self.num_clients = num_clients
        self.threads = threads
        self.chunk = chunk
        self._pending: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._cache: dict[str, Any] = {}  # the task's trainer and partitions, built once

    def get_node_ids(self) -> Iterable[int]:
        """Every virtual node (all are always connected)."""
        return range(FIRST_NODE_ID, FIRST_NODE_ID + self.num_clients)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Queue ``messages``; they are answered at the next pull."""
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as InMemoryGrid does
            self._pending.append(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Answer everything queued (train messages together), return the asked replies."""
        pending, self._pending = self._pending, []
        train = [m for m in pending if m.metadata.message_type == MessageType.TRAIN]
        for msg in pending:
            if msg.metadata.message_type == IDENTIFY:
                identity = ConfigRecord(identity_of({"partition-id": self.partition_of(msg)}))  # type: ignore[arg-type]
                self._keep(Message(RecordDict({IDENTITY_KEY: identity}), reply_to=msg))
            elif msg.metadata.message_type != MessageType.TRAIN:
                kind = msg.metadata.message_type
                why = f"the vmap backend answers train and identify messages, not {kind!r}"
                self._keep(Message(Error(code=0, reason=why), reply_to=msg))
        for start in range(0, len(train), self.chunk):
            for reply in self._train(train[start : start + self.chunk]):
                self._keep(reply)
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(  # noqa: D102
        self,
        messages: Iterable[Message],
        *,
        timeout: float | None = None,  # noqa: ARG002
    ) -> Iterable[Message]:
        return self.pull_messages(list(self.push_messages(messages)))

    def _keep(self, reply: Message) -> None:
        self._replies[reply.metadata.reply_to_message_id] = reply

    def partition_of(self, msg: Message) -> int:
        """The partition id of the node ``msg`` goes to."""
        return int(msg.metadata.dst_node_id) - FIRST_NODE_ID

    # -- training ------------------------------------------------------------------------

    def _train(self, messages: Sequence[Message]) -> list[Message]:
        if not messages:
            return []
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        started = time.perf_counter()
        plan, rnd, training = self._plan_of(messages)
        nodes = [self.partition_of(m) for m in messages]
        devices = [self._device(plan, p) for p in nodes]
        errors: dict[int, str] = {}
        if plan.privacy.enabled:
            errors = self._check_budgets(plan, training, nodes, devices)
        go = [i for i in range(len(messages)) if i not in errors]
        jobs = [self._job(plan, rnd, nodes[i]) for i in go]
        trainer = self._trainer(plan)
        # The ClientApp's attack entry point and FedProx's μ (edgeai.flower.attacks, training).
        attack = AttackPlan.of(plan.attack, self.num_clients, plan.seed)
        labels = self._labels(plan, trainer, attack, [nodes[i] for i in go], jobs)
        mu = plan.strategy.mu
        states = [messages[i].content.array_records["arrays"].to_torch_state_dict() for i in go]
        stacked = {n: torch.stack([s[n] for s in states]) for n in trainer.names} if go else {}
        dp: list[DPSetting] = []
        if not go:
            losses: list[float] = []
            steps: list[int] = []
        elif plan.privacy.enabled:
            dp = [self._dp(plan, training, j) for j in jobs]
            steps = [d.steps for d in dp]
            sched = poisson_schedule(jobs, training, steps)
            stacked, losses = trainer.train_dp(
                stacked, sched, training, jobs, dp, mu=mu, labels=labels
            )
        else:
            sched = plain_schedule(jobs, training)
            steps = sched.active.sum(dim=1).tolist()
            stacked, losses = trainer.train_plain(stacked, sched, training, mu=mu, labels=labels)
        seconds = (time.perf_counter() - started) / max(len(messages), 1)
        replies = []
        for i, msg in enumerate(messages):
            if i in errors:
                replies.append(
                    Message(Error(code=BUDGET_EXHAUSTED, reason=errors[i]), reply_to=msg)
                )
                continue
            j = go.index(i)
            metrics: dict[str, int | float] = {
                "num-examples": len(jobs[j].indices),
                "train-loss": losses[j] if math.isfinite(losses[j]) else -1.0,
                "steps": int(steps[j]),
                "train-seconds": seconds,
                "process-seconds": seconds,  # no process start: every client lives here
            }
            if dp:
                metrics |= self._record_spend(plan, devices[i], rnd, dp[j], len(jobs[j].indices))
            state = {n: stacked[n][j].clone() for n in trainer.names}
            if attack.attacks(nodes[i]):
                state = _poisoned(attack, nodes[i], rnd, states[j], state)
            content = RecordDict(
                {"arrays": ArrayRecord(state), "metrics": MetricRecord({**metrics})}
            )
            replies.append(Message(content, reply_to=msg))
        return replies

    @staticmethod
    def _plan_of(messages: Sequence[Message]) -> tuple[ClientPlan, int, TrainingConfig]:
        """The round's one plan, its round, and its training settings at that round."""
        config = messages[0].content.config_records["config"]
        plan = ClientPlan.model_validate_json(str(config[PLAN_KEY]))
        rnd = int(str(config.get("server-round", 0)))
        if any(
            str(m.content.config_records["config"][PLAN_KEY]) != str(config[PLAN_KEY])
            for m in messages
        ):
            raise ConfigError("the vmap backend trains one plan per round; messages carry several")
        training = plan.training.model_copy(
            update={"learning_rate": plan.training.learning_rate_at(rnd, plan.num_rounds)}
        )
        return plan, rnd, training

    @staticmethod
    def _labels(
        plan: ClientPlan,
        trainer: BatchedTrainer,
        attack: AttackPlan,
        nodes: list[int],
        jobs: list[ClientJob],
    ) -> torch.Tensor | None:
        """Each client's targets when a label-flipper trains this round (else None)."""
        flippers = [j for j, node in enumerate(nodes) if attack.attacks(node)]
        if not flippers or attack.config is None or attack.config.kind != "label-flip":
            return None
        task = load_config(plan.task)
        known = task.labels()
        if known is None:
            raise ConfigError(f"attack.kind = 'label-flip' needs class labels; task {task.name!r}")
        classes = int(max(known)) + 1
        table = trainer.targets.expand(len(nodes), -1).clone()
        for j in flippers:
            own = trainer.targets[jobs[j].indices].numpy()
            flipped = attack.poison_labels(nodes[j], own, classes)
            table[j, jobs[j].indices] = torch.from_numpy(np.asarray(flipped))
        return table

    def _device(self, plan: ClientPlan, partition: int) -> Device:
        node = {"partition-id": partition, "num-partitions": self.num_clients}
        return device_of(plan, node, FIRST_NODE_ID + partition, 0)

    def _trainer(self, plan: ClientPlan) -> BatchedTrainer:
        key = f"trainer:{plan.task.model_dump_json()}"
        if key not in self._cache:
            task = load_config(plan.task)
            train, _ = task_datasets(plan.task)
            inputs, targets = batch_of(train, torch.arange(size_of(train)))
            self._cache[key] = BatchedTrainer(task.build_model(), task.loss, inputs, targets)
        trainer: BatchedTrainer = self._cache[key]
        return trainer

    def _parts(self, plan: ClientPlan) -> list[torch.Tensor]:
        spec = plan.data.partition
        key = f"parts:{plan.task.model_dump_json()}:{spec.model_dump_json()}"
        if key not in self._cache:
            train, _ = task_datasets(plan.task)
            parts = partitions(load_config(plan.task), train, self.num_clients, spec, spec.seed)
            self._cache[key] = [torch.as_tensor(p, dtype=torch.long) for p in parts]
        parts_: list[torch.Tensor] = self._cache[key]
        return parts_

    def _job(self, plan: ClientPlan, rnd: int, partition: int) -> ClientJob:
        # The ClientApp's streams: its generator, whose first draw seeds torch's global RNG.
        gen = seeded_generator(plan.seed, rnd, partition)
        noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        return ClientJob(self._parts(plan)[partition], gen, noise_seed)

    @staticmethod
    def _dp(plan: ClientPlan, training: TrainingConfig, job: ClientJob) -> DPSetting:
        sigma, _, steps = plan_dp(len(job.indices), training, plan.privacy, plan.num_rounds)
        return DPSetting(sigma, steps, plan.privacy.max_grad_norm)

    def _check_budgets(
        self, plan: ClientPlan, training: TrainingConfig, nodes: list[int], devices: list[Device]
    ) -> dict[int, str]:
        """As the ClientApp does before DP-SGD: set the budget, refuse past it."""
        privacy, refused = plan.privacy, {}
        for i, (node, device) in enumerate(zip(nodes, devices, strict=True)):
            if device.ledger_path is None:
                raise ConfigError("DP-SGD needs a privacy ledger: set ledger_dir in the plan")
            budget = privacy.budget
            if budget is None:
                continue
            planned = plan_dp(len(self._parts(plan)[node]), training, privacy, plan.num_rounds)
            with PrivacyLedger(device.ledger_path) as ledger:
                current = ledger.budget(device.subject)
                if current is None or (current.epsilon, current.delta) != (budget, privacy.delta):
                    ledger.set_budget(device.subject, budget, privacy.delta, privacy.accountant)
                try:
                    ledger.require(device.subject, planned)
                except BudgetExhaustedError as exc:
                    refused[i] = str(exc)
        return refused

    @staticmethod
    def _record_spend(
        plan: ClientPlan, device: Device, rnd: int, dp: DPSetting, n: int
    ) -> dict[str, int | float]:
        privacy = plan.privacy
        _, sample_rate, _ = plan_dp(n, plan.training, privacy, plan.num_rounds)
        if device.ledger_path is None:  # checked before training
            raise ConfigError("DP-SGD needs a privacy ledger")
        with PrivacyLedger(device.ledger_path) as ledger:
            ledger.record(
                device.subject,
                run_id=device.run_id,
                server_round=rnd,
                noise_multiplier=dp.sigma,
                sample_rate=sample_rate,
                steps=dp.steps,
                delta=privacy.delta,
                accountant=privacy.accountant,
            )
            history = ledger.history(device.subject)
            epsilon = ledger.spent(device.subject, privacy.delta, privacy.accountant)
        return {
            "epsilon": epsilon,
            "delta": privacy.delta,
            "noise-multiplier": dp.sigma,
            "sample-rate": sample_rate,
            "dp-steps": sum(h[2] for h in history),
        }


def _poisoned(
    attack: AttackPlan,
    node: int,
    rnd: int,
    received: dict[str, torch.Tensor],
    trained: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """What an attacking client sends instead of ``trained`` (as the ClientApp does)."""
    sent = attack.poison_update(
        node,
        rnd,
        {n: v.numpy() for n, v in received.items()},
        {n: v.numpy() for n, v in trained.items()},
    )
    return {n: torch.from_numpy(np.asarray(v)) for n, v in sent.items()}
