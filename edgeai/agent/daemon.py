"""The agent daemon: wires serving, updates, federation, telemetry and discovery together.

One asyncio loop holds the inference server; everything that blocks (TUF downloads, the
gate, mDNS look-ups, the ledger) runs in worker threads; the SuperNode and the telemetry
pump have their own threads. The order of start-up puts serving first: a device that has
a model serves it whatever the network, broker or server are doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from edgeai import __version__
from edgeai.agent.config import AgentConfig
from edgeai.agent.events import Reporter
from edgeai.agent.metrics import AgentGauges, sample
from edgeai.agent.privacy import PrivacyReport
from edgeai.agent.startup import ExitCode, StateDirError, check_named_files, prepare_state_dir
from edgeai.agent.supernode import LedgerWatch, ledger_path, start_federation
from edgeai.artifacts import (
    BundleUpdater,
    ModelStore,
    ServeHandle,
    UpdaterConfig,
    apply_latest,
    serve_mirror,
)
from edgeai.artifacts.apply import ReleaseSource
from edgeai.artifacts.gate import InvalidBundle, verify_bundle
from edgeai.discovery import AgentDiscovery, AgentInfo, Discovery, Ports, ServerInfo
from edgeai.errors import ConfigError, EdgeAIError
from edgeai.plumbing.supervisor import ProcessSupervisor
from edgeai.profiles import DeviceProfile, load_profile
from edgeai.serving.model import ModelHolder, load_served
from edgeai.serving.server import InferenceServer
from edgeai.telemetry.mqtt import Transport

log = logging.getLogger(__name__)
FACTORY_RELEASE = 0  # the bundle shipped with the device; any signed release replaces it


class Agent:
    """One device's agent. ``await run(stop)`` serves until ``stop`` is set.

    Parameters
    ----------
    config
        The validated ``agent.toml``.
    registry
        Prometheus registry for ``/metrics`` (a private one by default).
    discovery
        mDNS browsing and advertising (default: zeroconf from ``[discovery]``; none when
        discovery is off); a ``MemoryDiscovery`` in unit tests. Started and closed here.
    transport
        The telemetry's MQTT link when ``[telemetry]`` is set (default: paho); a
        ``MemoryTransport`` in unit tests.
    store
        The two-slot model store (default: ``models/`` in the state directory).
    updater
        Makes the release source for a repository URL (default: the TUF ``BundleUpdater``).
    clock
        Wall-clock time (telemetry timestamps, the peer table).
    """

    def __init__(
        self,
        config: AgentConfig,
        registry: CollectorRegistry | None = None,
        *,
        discovery: AgentDiscovery | None = None,
        transport: Transport | None = None,
        store: ModelStore | None = None,
        updater: Callable[[UpdaterConfig], ReleaseSource] = BundleUpdater,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.profile: DeviceProfile = load_profile(config.profile)
        check_named_files(config)
        self.registry = registry if registry is not None else CollectorRegistry()
        self.state_dir = config.state_dir
        prepare_state_dir(self.state_dir)
        self._given_discovery, self._updater, self._clock = discovery, updater, clock
        try:
            self.store = store if store is not None else ModelStore(self.state_dir / "models")
            self.reporter = Reporter(config, self.state_dir, transport=transport, clock=clock)
        except (OSError, sqlite3.Error) as exc:
            raise StateDirError(f"state_dir {self.state_dir}: unusable ({exc})") from exc
        self.holder = ModelHolder()
        self.server = InferenceServer(self.holder, config.serving, self.registry)
        self.discovery: AgentDiscovery | None = None
        self.supernode: ProcessSupervisor | None = None
        self.superexec: ProcessSupervisor | None = None
        self.mirror: ServeHandle | None = None
        self.release: int | None = None
        self.privacy = PrivacyReport(LedgerWatch(ledger_path(config), config.node), self.reporter)
        self._server_info: ServerInfo | None = None
        self._reported: set[tuple[str, object, object]] = set()
        self.gauges = AgentGauges(self.registry)

    # -- life cycle --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Start everything, serve until ``stop`` is set, then shut down in order."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.reporter.start(self.profile)
        self.reporter.event("agent_started", version=__version__, profile=self.profile.name)
        try:
            await asyncio.to_thread(self._load_installed)
            await self.server.start()
        except EdgeAIError as exc:  # a bad factory bundle, a broken store, a taken port
            self.reporter.event("agent_stopping", reason=f"cannot start: {exc}")
            self.reporter.stop(self.config.shutdown_grace_s)
            raise
        self._restart_mirror()
        self._publish_status("online")
        await asyncio.to_thread(self._start_discovery)
        tasks = [
            asyncio.create_task(self._find_server_then_start(stop), name="federation"),
            asyncio.create_task(self._metrics_loop(stop), name="metrics"),
        ]
        try:
            await stop.wait()
        finally:
            await self._shutdown(tasks)
        return ExitCode.OK

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        grace = self.config.shutdown_grace_s
        self.reporter.event("agent_stopping", reason="signal")
        self._publish_status("stopping")
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for child in (self.superexec, self.supernode):
            if child is not None:
                await asyncio.to_thread(child.stop, grace)
        await self.server.stop(grace)
        if self.mirror is not None:
            self.mirror.close()
        if self.discovery is not None:
            await asyncio.to_thread(self.discovery.close)
        await asyncio.to_thread(self.reporter.stop, grace)

    # -- models --------------------------------------------------------------------------

    def _load_installed(self) -> None:
        active = self.store.recover()
        if active is None and self.config.bundle is not None:
            try:  # the same verification as `agent serve` and every release's gate
                verify_bundle(self.config.bundle, self.profile)
            except InvalidBundle as exc:
                raise ConfigError(f"agent.toml: bundle {exc}") from exc
            slot = self.store.stage(self.config.bundle, FACTORY_RELEASE)
            active = self.store.commit(slot)
            self.reporter.event(
                "model_applied",
                release=FACTORY_RELEASE,
                version=active.version,
                previous=None,
                source="factory",
            )
        elif self.config.bundle is not None and not self.config.bundle.is_dir():
            log.warning(
                "factory bundle %s is gone; serving the installed model", self.config.bundle
            )
        if active is None:
            log.warning("no model installed yet: serving nothing until a release arrives")
            return
        try:
            self._activate(active.path)
        except EdgeAIError as exc:  # verified files that still do not load: use the other slot
            self.reporter.event(
                "rollback",
                release=active.release,
                version=active.version,
                stage="load",
                reason=str(exc),
            )
            previous = self.store.rollback()
            self._activate(previous.path)
        self.release = active.release

    def _activate(self, bundle: Path) -> None:
        """Load ``bundle`` beside the serving model and swap it in (requests never fail)."""
        served = load_served(bundle, self.profile)
        if served.fallbacks:  # e.g. a Jetson profile on a host without TensorRT or CUDA
            self.reporter.event(
                "provider_fallback",
                provider=served.provider,
                reasons=list(served.fallbacks),
                version=served.version,
            )
        self.holder.swap(served)
        active = self.store.active()
        self.release = active.release if active is not None else None
        self.gauges.set({"release": self.release if self.release is not None else -1})

    def _restart_mirror(self) -> None:
        active = self.store.active()
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None
        if active is not None:
            host = self.config.updates.mirror_host or self.config.serving.host
            self.mirror = serve_mirror(active.path, host, 0)

    def _update_once(self) -> str:
        cfg, info = self.config.updates, self._server_info
        url = cfg.repository_url or (info.artifact_url if info else None)
        if url is None or cfg.trusted_root is None:
            return "no repository"
        updater = self._updater(
            UpdaterConfig(
                repository_url=url,
                trusted_root=cfg.trusted_root,
                cache_dir=self.state_dir / "tuf",
                max_bundle_bytes=cfg.max_bundle_bytes,
                download_deadline_s=cfg.download_deadline_s,
            )
        )
        outcome = apply_latest(
            updater,
            self.store,
            self.profile,
            self._update_event,
            mirrors=self._mirrors(),
            activate=self._activate,
            node=self.config.node,
        )
        if outcome.status in ("applied", "rolled_back"):
            self._restart_mirror()
            self._publish_status("online")
            if self.discovery is not None:
                self.discovery.update_agent(model_version=outcome.version, ports=self._ports())
        elif outcome.status == "unavailable":
            log.info("update check: repository unavailable (%s); retrying", outcome.reason)
        return outcome.status

    def _update_event(self, kind: str, fields: dict[str, Any]) -> None:
        # A release that stays tampered or unreachable is retried every interval; report
        # each (release, reason) once instead of filling the outbox with copies.
        key = (kind, fields.get("release"), fields.get("reason"))
        if kind == "model_rejected" and key in self._reported:
            return
        self._reported.add(key)
        self.reporter.event(kind, **fields)

    def _mirrors(self) -> list[str]:
        if self.discovery is None:
            return []
        return [
            f"http://{addr}:{peer.ports.artifact}"
            for peer in self.discovery.peers()
            if peer.profile == self.profile.name and peer.ports.artifact
            for addr in peer.addresses[:1]
        ]

    # -- discovery and federation ----------------------------------------------------------

    def _ports(self) -> Ports:
        return Ports(
            grpc=self.server.grpc_port,
            http=self.server.http_port,
            artifact=int(self.mirror.url.rsplit(":", 1)[1]) if self.mirror is not None else None,
        )

    def _start_discovery(self) -> None:
        self.discovery = self._given_discovery
        if self.discovery is None and self.config.discovery is not None:
            self.discovery = Discovery(self.config.discovery, clock=self._clock)
        if self.discovery is None:
            return
        self.discovery.start()
        served = self.holder.current()
        fleet = self.config.telemetry.fleet if self.config.telemetry else "default"
        self.discovery.advertise_agent(
            AgentInfo(
                node=self.config.node,
                fleet=fleet,
                profile=self.profile.name,
                model_version=served.version if served else None,
                ports=self._ports(),
            )
        )

    async def _find_server_then_start(self, stop: asyncio.Event) -> None:
        fed, upd = self.config.federation, self.config.updates
        needs_server = (fed.enabled and fed.superlink is None) or (
            upd.enabled and upd.repository_url is None
        )
        while needs_server and self._server_info is None and not stop.is_set():
            if self.discovery is None:
                return
            fleet = self.config.discovery.fleet if self.config.discovery else None
            self._server_info = await asyncio.to_thread(self.discovery.find_server, 5.0, fleet)
            if self._server_info is not None:
                self.reporter.event(
                    "server_found",
                    superlink=self._server_info.superlink,
                    artifact_url=self._server_info.artifact_url,
                )
        if fed.enabled:
            self._start_supernode()
        if upd.enabled:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self._update_once)
                except Exception:  # an update must never take serving down
                    log.exception("update check failed")
                await _sleep_or_stop(stop, upd.interval_s)

    def _start_supernode(self) -> None:
        fed = self.config.federation
        superlink = fed.superlink or (self._server_info.superlink if self._server_info else None)
        if superlink is None:
            return
        self.supernode, self.superexec = start_federation(
            self.config, superlink, self.reporter.event_sink
        )

    # -- telemetry ---------------------------------------------------------------------------

    def _publish_status(self, state: str) -> None:
        served = self.holder.current()
        self.reporter.status(
            state,
            profile=self.profile.name,
            model_version=served.version if served else None,
            release=self.release,
            provider=served.provider if served else None,
            fallbacks=list(served.fallbacks) if served else [],
            grpc_port=self.server.grpc_port,
            http_port=self.server.http_port,
            host=socket.gethostname(),
        )

    async def _metrics_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                if self.config.federation.enabled:
                    await asyncio.to_thread(self.privacy.poll)
            except EdgeAIError as exc:
                log.warning("privacy ledger unreadable: %s", exc)
            self.reporter.metrics(self.metrics())
            await _sleep_or_stop(stop, self.config.metrics_interval_s)

    def metrics(self) -> dict[str, Any]:
        """One telemetry sample; the gauges on /metrics follow it."""
        state = {
            "release": self.release,
            "epsilon": self.privacy.epsilon,
            "delta": self.privacy.delta,
            "rounds_joined": self.privacy.rounds_joined,
            "supernode_starts": self.supernode.starts if self.supernode else None,
        }
        serving, outbox = self.server.stats(), self.reporter.stats()
        values = sample(serving, self.reporter.process_stats(), outbox, state)
        self.gauges.set({**values, "supernode_starts": state["supernode_starts"]})
        return values


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def run_agent(config: AgentConfig, on_ready: Callable[[Agent], None] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT; return an :class:`ExitCode`."""
    import signal  # noqa: PLC0415

    async def main() -> int:
        agent = Agent(config)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = asyncio.create_task(agent.run(stop))
        if on_ready is not None:
            while not runner.done() and agent.server.http_port == 0:
                await asyncio.sleep(0.01)
            if not runner.done():
                on_ready(agent)
        return await runner

    return asyncio.run(main())
