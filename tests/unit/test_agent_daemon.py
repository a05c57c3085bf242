"""The agent's wiring with its parts replaced by their in-memory twins.

Discovery is a ``MemoryDiscovery`` on a ``MemoryLan``, the telemetry link a
``MemoryTransport``, the TUF updater a recording release source: the agent runs in this
process with nothing but its own (loopback) serving ports.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from edgeai.agent.config import load_agent_config
from edgeai.agent.daemon import Agent
from edgeai.artifacts import ModelStore, UpdaterConfig
from edgeai.artifacts.updater import ReleaseInfo, SignedReleases
from edgeai.discovery import MemoryAdvert, MemoryDiscovery, MemoryLan, ServerInfo
from edgeai.telemetry import Envelope, MemoryTransport, decode
from tests.support.clock import FakeClock
from tests.support.waiting import wait_for_async

PROFILE = "x86-64-avx2"
SERVER = ServerInfo(
    fleet="lab",
    superlink="127.0.0.1:9092",
    artifact_url="http://127.0.0.1:8080",
    mqtt_url="mqtt://127.0.0.1:1883",
    version="1",
)


class NoReleases:
    """A release source with nothing published; remembers what it was made for."""

    def __init__(self) -> None:
        self.made: list[UpdaterConfig] = []

    def __call__(self, config: UpdaterConfig) -> NoReleases:
        self.made.append(config)
        return self

    def releases(self, profile: str) -> SignedReleases:
        return SignedReleases(profile)

    def download(self, release: ReleaseInfo, dest_dir: Path, mirrors: Sequence[str] = ()) -> Path:
        raise AssertionError(f"nothing was published, yet {release} went to {dest_dir} {mirrors}")


def agent_toml(root: Path) -> Path:
    (root / "root.json").write_text("{}")  # never read: the updater is a twin
    path = root / "agent.toml"
    path.write_text(
        f'node = "a1"\nprofile = "{PROFILE}"\nstate_dir = "state"\nmetrics_interval_s = 0.05\n'
        '[discovery]\nfleet = "lab"\n[federation]\nenabled = false\n'
        '[updates]\ntrusted_root = "root.json"\ninterval_s = 0.05\n'
        "[serving]\ngrpc_port = 0\nhttp_port = 0\n"
        '[telemetry]\nbroker_url = "mqtt://127.0.0.1:1883"\nfleet = "lab"\n'
    )
    return path


def sent(link: MemoryTransport, suffix: str) -> list[Envelope]:
    return [decode(m.payload) for m in link.received if m.topic.endswith(suffix)]


def test_the_agent_finds_the_server_advertises_itself_and_reports_through_its_twins(
    tmp_path: Path,
) -> None:
    lan, link, updater = MemoryLan(), MemoryTransport(), NoReleases()
    MemoryAdvert(lan).advertise(SERVER)
    neighbour = MemoryDiscovery(lan, fleet="lab")
    neighbour.start()
    store = ModelStore(tmp_path / "elsewhere")
    agent = Agent(
        load_agent_config(agent_toml(tmp_path)),
        discovery=MemoryDiscovery(lan, fleet="lab"),
        transport=link,
        store=store,
        updater=updater,
        clock=FakeClock(1_000.0),
    )
    assert agent.store is store

    async def main() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(agent.run(stop))
        await wait_for_async(lambda: updater.made, 10, "an update check against the server")
        await wait_for_async(neighbour.peers, 10, "the agent's advert")
        await wait_for_async(lambda: sent(link, "/telemetry"), 10, "a metrics sample")
        stop.set()
        assert await runner == 0

    asyncio.run(main())

    assert updater.made[0].repository_url == SERVER.artifact_url
    assert updater.made[0].cache_dir == agent.state_dir / "tuf"
    statuses = sent(link, "/status")
    assert [s.body["state"] for s in statuses] == ["online", "stopping", "stopped"]
    assert {s.ts for s in statuses} == {1_000.0}  # the clock it was given
    assert statuses[0].body["http_port"] > 0
    events = [e.body for e in sent(link, "/events/server_found")]
    assert events == [{"superlink": SERVER.superlink, "artifact_url": SERVER.artifact_url}]
    assert neighbour.peers() == []  # withdrawn on the way out
    assert not link.is_connected()
