"""``edgeai server run``: the operator's supervisor — it wires the parts and holds little logic.

Start order: broker (when managed) → telemetry collector, ``/metrics`` and the read-only
dashboard (``[dashboard]``, edgeai/server/dashboard/) → TUF repository
and its HTTP server → SuperLink → zeroconf advert → the training run. While the run goes,
each new checkpoint that is due is proposed to the release manager (quality gate → compile
per profile → sign → canary wave → promote or revoke), whose ``step`` runs every tick.
``status.json`` in the state directory says what the server is doing, for ``edgeai demo``
and for operators.

Each part it talks to is a constructor argument with the real one built from the config
as the default; unit tests pass the in-memory twins (``MemorySubscriber``, ``MemoryRuns``,
``MemoryAdvert``, ``MemoryTransport``) instead of patching private methods.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edgeai import __version__
from edgeai.artifacts import ArtifactRepository, ServeHandle, serve
from edgeai.discovery import FederationAdvert, ServerAdvert, ServerInfo
from edgeai.errors import DataError
from edgeai.flower.runspec import RunPaths, RunSpec, read_status
from edgeai.plumbing.files import atomic_write
from edgeai.server.announcer import Announcer, announcer_options
from edgeai.server.broker import ManagedBroker
from edgeai.server.collector import Collector, Subscriber
from edgeai.server.config import ArtifactsConfig, ServerConfig
from edgeai.server.dashboard import DashboardServer, StateSource
from edgeai.server.releases import ReleaseManager
from edgeai.server.superlink import (
    ControlAPIError,
    ControlRuns,
    RunControl,
    RunStatus,
    SuperLinkProcess,
    write_flwr_config,
)
from edgeai.telemetry.mqtt import PahoTransport, Transport

log = logging.getLogger(__name__)


class ExitCode:
    """Exit codes of ``edgeai server run``."""

    OK = 0  # stopped by a signal, or the run finished with --exit-when-done
    FAILED = 1  # the run failed, or a part died
    BAD_CONFIG = 2  # federation.toml or a file it names is invalid
    CANNOT_START = 3  # a port is taken, the broker or the SuperLink did not come up


class SuperLink(Protocol):
    """What the server needs of the SuperLink's process (:class:`SuperLinkProcess` is one)."""

    def start(self) -> None:
        """Start it and wait until it accepts connections."""
        ...

    def stop(self) -> object:
        """Stop it."""
        ...


class FederationServer:
    """The server's parts, started in order and stopped in reverse.

    Parameters
    ----------
    config
        The validated ``federation.toml``.
    on_status
        Called with each ``status.json`` body the server writes.
    broker
        The managed Mosquitto (default: one from ``[broker]`` when ``manage = true``).
    subscriber
        The collector's MQTT subscriber (default: paho, from the collector's settings).
    repository
        The TUF repository (default: ``[artifacts]``'s, opened or created).
    superlink
        The SuperLink's process (default: ``flower-superlink`` from ``[superlink]``).
    runs
        Where the training run is submitted and followed (default: the Control API).
    advert
        The zeroconf advert (default: from ``[discovery]``; none when discovery is off).
    announcer_transport
        The release announcer's MQTT link (default: paho, with its own broker account).
    clock
        Wall-clock time (status timestamps, the collector's offline detection).

    Parts passed in are started and stopped by the server like the ones it builds.
    """

    MAX_RESUBMITS = 3

    def __init__(
        self,
        config: ServerConfig,
        on_status: Callable[[dict[str, Any]], None] | None = None,
        *,
        broker: ManagedBroker | None = None,
        subscriber: Subscriber | None = None,
        repository: ArtifactRepository | None = None,
        superlink: SuperLink | None = None,
        runs: RunControl | None = None,
        advert: ServerAdvert | None = None,
        announcer_transport: Transport | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.state = config.state_dir
        self._on_status = on_status
        self._given_broker, self._given_superlink = broker, superlink
        self._subscriber, self._given_repo, self._given_advert = subscriber, repository, advert
        self._announcer_transport = announcer_transport
        self._clock = clock
        home = config.superlink.flwr_home or self.state / "flwr-home"
        self.flwr_home = home  # config.toml for `flwr ls edgeai` (superlink/flwr_cli.py)
        self.runs: RunControl = runs if runs is not None else ControlRuns(config.superlink, home)
        self.broker: ManagedBroker | None = None
        self.collector: Collector | None = None
        self.repo: ArtifactRepository | None = None
        self.artifacts: ServeHandle | None = None
        self.superlink: SuperLink | None = None
        self.advert: ServerAdvert | None = None
        self.announcer: Announcer | None = None
        self.releases: ReleaseManager | None = None
        self.run_id: int | None = None
        self.run_status: RunStatus | None = None
        self.metrics_url: str | None = None
        self.dashboard: DashboardServer | None = None
        self._proposed: set[int] = set()
        self._resubmits = 0
        self._alerted: int | None = None
        self._stop = threading.Event()

    # -- start / stop ---------------------------------------------------------------------

    def start(self) -> None:
        """Start every part; on failure, stop what was started and re-raise."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        cfg = self.config
        self.state.mkdir(parents=True, exist_ok=True)
        collector_cfg = cfg.collector
        broker = self._given_broker or (ManagedBroker(cfg.broker) if cfg.broker.manage else None)
        if broker is not None:
            self.broker = broker.start()
            creds = self.broker.server_credentials()
            collector_cfg = collector_cfg.model_copy(update=creds.settings())
        self.collector = Collector(collector_cfg, self._subscriber, self._clock)
        self.collector.start()
        self.metrics_url = self.collector.serve_metrics(cfg.metrics_host, cfg.metrics_port).url
        if cfg.dashboard.enabled:  # reads the state dir only, like `edgeai dashboard`
            self.dashboard = DashboardServer(StateSource.of(cfg), cfg.dashboard, cfg.fleet)
            self.dashboard.start()
        link = self._announcer_transport or PahoTransport(announcer_options(collector_cfg))
        self.announcer = Announcer(link, cfg.fleet)
        self.repo = self._given_repo or _open_repository(cfg.artifacts)
        self.artifacts = serve(self.repo.path, cfg.artifacts.host, cfg.artifacts.port)
        self.superlink = self._given_superlink or SuperLinkProcess(cfg.superlink)
        self.superlink.start()
        write_flwr_config(cfg.superlink, self.flwr_home)
        self.releases = ReleaseManager(self.repo, self.collector, self.announcer, cfg.releases)
        advert = self._given_advert
        if advert is None and cfg.discovery is not None:
            advert = FederationAdvert(cfg.discovery)
        if advert is not None:
            self.advert = advert
            self.advert.advertise(
                ServerInfo(
                    fleet=cfg.fleet,
                    superlink=cfg.superlink.address,
                    artifact_url=self.artifact_url,
                    mqtt_url=collector_cfg.broker_url,
                    version=__version__,
                )
            )
        if cfg.run is not None:
            self._submit()
        self._write_status()

    @property
    def artifact_url(self) -> str:
        """The repository URL agents use (configured, or the bound address)."""
        if self.config.artifacts.base_url:
            return self.config.artifacts.base_url
        return self.artifacts.url if self.artifacts is not None else ""

    @property
    def run_paths(self) -> RunPaths:
        """Where the training run writes checkpoints, rounds.jsonl and status.json."""
        return RunPaths(self.state / "run")

    def _submit(self) -> None:
        from edgeai.flower.experiment import load_experiment  # noqa: PLC0415  (train extra)

        run = self.config.run
        assert run is not None  # noqa: S101  (only called with a run configured)
        overrides: dict[str, object] = {}
        if run.rounds is not None:
            overrides["federation.rounds"] = run.rounds
        spec = RunSpec(
            experiment=load_experiment(run.experiment, overrides),
            out_dir=self.run_paths.root,
            min_nodes=run.min_nodes,
            node_wait_s=run.node_wait_s,
        )
        self.run_id = self.runs.submit(spec)
        log.info("submitted run %s", self.run_id)

    def stop(self) -> None:
        """Stop every part that was started, in reverse order."""
        self._stop.set()
        parts: list[tuple[str, Callable[[], object] | None]] = [
            ("advert", self.advert.close if self.advert is not None else None),
            ("superlink", self.superlink.stop if self.superlink is not None else None),
            ("artifacts", self.artifacts.close if self.artifacts is not None else None),
            ("announcer", self.announcer.close if self.announcer is not None else None),
            ("dashboard", self.dashboard.close if self.dashboard is not None else None),
            ("collector", self.collector.stop if self.collector is not None else None),
            ("broker", self.broker.stop if self.broker is not None else None),
        ]
        for name, close in parts:
            if close is None:
                continue
            try:
                close()
            except Exception:  # one part failing to stop must not keep the others running
                log.exception("stopping %s failed", name)
        self.advert = self.superlink = self.artifacts = self.announcer = None
        self.collector = self.broker = None
        self.dashboard = None

    # -- the loop -------------------------------------------------------------------------

    def tick(self) -> None:
        """One step: follow the run, propose due checkpoints, judge release waves."""
        if self.run_id is not None and not (self.run_status and self.run_status.finished):
            try:
                self.run_status = self.runs.status(self.run_id)
            except ControlAPIError as exc:  # e.g. the SuperLink is restarting
                log.warning("run %s: %s", self.run_id, exc)
            self._resubmit_if_cut_off()
        self._propose_due()
        if self.releases is not None:
            for change in self.releases.step():
                log.info("release change: %s", change)
        self._write_status()

    def _resubmit_if_cut_off(self) -> None:
        # A SuperLink that restarts ends the run in flight as failed (its ServerApp process
        # died with it). Submitting the same spec again resumes from the last checkpoint and
        # the persisted accountant; a run that keeps failing is given up after a few tries.
        st = self.run_status
        if st is None or not st.finished or st.ok or st.sub_status == "stopped":
            return
        server_app = read_status(self.run_paths) or {}
        # A ServerApp cut off while starting, running or waiting for nodes said nothing of
        # its own; one that wrote "failed" or "finished" did (and is not resubmitted).
        if server_app.get("state") not in (None, "starting", "waiting-for-nodes", "running") or (
            self._resubmits >= self.MAX_RESUBMITS
        ):
            # The ServerApp said why it ended (too few nodes, budgets ...), or it keeps
            # failing: alert once and leave it to the operator.
            if self._alerted != st.run_id:
                self._alerted = st.run_id
                log.error(
                    "run %s ended %s: %s",
                    st.run_id,
                    st.sub_status,
                    server_app.get("reason") or st.details or "no details",
                )
            return
        self._resubmits += 1
        log.warning(
            "run %s ended %s (%s); resubmitting (%d/%d) to resume from its checkpoint",
            st.run_id,
            st.sub_status,
            st.details,
            self._resubmits,
            self.MAX_RESUBMITS,
        )
        try:
            self._submit()
            self.run_status = None
        except ControlAPIError as exc:
            log.warning("resubmitting failed: %s", exc)

    def _propose_due(self) -> None:
        run, releases = self.config.run, self.releases
        if run is None or releases is None:
            return
        files = self.run_paths.checkpoint_files()
        if not files:
            return
        # Only a run that completed releases its last checkpoint (a cut-off run is resumed).
        finished = bool(self.run_status and self.run_status.ok)
        for path in files:
            number = int(path.stem.split("-")[1])
            last = path == files[-1]
            due = (run.release_every and number % run.release_every == 0) or (last and finished)
            if number in self._proposed or not due:
                continue
            self._proposed.add(number)
            try:
                releases.propose_checkpoint(path)
            except DataError as exc:  # never the loop's own checkpoints; say so, go on
                log.error("checkpoint %s not proposed: %s", path, exc)

    def serve_forever(self, tick_s: float = 1.0, exit_when_done: bool = False) -> int:
        """Tick until stopped (or, with ``exit_when_done``, until the run and releases end)."""
        while not self._stop.wait(tick_s):
            self.tick()
            if exit_when_done and self._done():
                return ExitCode.OK if self.run_status and self.run_status.ok else ExitCode.FAILED
        return ExitCode.OK

    def _done(self) -> bool:
        if self.run_status is None or not self.run_status.finished:
            return False
        return not (self.releases and self.releases.in_flight())

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` return (signal handlers call this)."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        """What the server is doing: run, rounds, releases, endpoints."""
        rounds = []
        if self.run_paths.rounds.is_file():
            rounds = [json.loads(line) for line in self.run_paths.rounds.read_text().splitlines()]
        return {
            "ts": self._clock(),
            "fleet": self.config.fleet,
            "superlink": self.config.superlink.address,
            "artifact_url": self.artifact_url,
            "broker_url": self.broker.url if self.broker else self.config.collector.broker_url,
            "metrics_url": self.metrics_url,
            "dashboard_url": self.dashboard.url if self.dashboard else None,
            "flwr_home": str(self.flwr_home),
            "run": {
                "id": self.run_id,
                "status": self.run_status.status if self.run_status else None,
                "sub_status": self.run_status.sub_status if self.run_status else None,
                "details": self.run_status.details if self.run_status else None,
                "server_app": read_status(self.run_paths),
                "rounds": rounds,
            },
            "releases": self.releases.status() if self.releases else None,
        }

    def _write_status(self) -> None:
        body = self.status()
        # A view rewritten every tick: no fsync per tick; a power cut loses one tick's view.
        text = json.dumps(body, indent=2, default=str)
        atomic_write(self.state / "status.json", text, durable=False)
        if self._on_status is not None:
            self._on_status(body)


def _open_repository(art: ArtifactsConfig) -> ArtifactRepository:
    if (art.repository / "metadata").is_dir():
        return ArtifactRepository.open(
            art.repository, keys_dir=art.keys_dir, targets_key=art.targets_key
        )
    return ArtifactRepository.create(art.repository, keys_dir=art.keys_dir)


def read_server_status(state_dir: Path) -> dict[str, Any] | None:
    """The server's last ``status.json`` (None before it wrote one)."""
    try:
        data: dict[str, Any] = json.loads((state_dir / "status.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data
