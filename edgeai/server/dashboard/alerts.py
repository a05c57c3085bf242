"""What needs the operator's attention, derived from the state the dashboard reads (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgeai.server.collector import NodeState
from edgeai.server.dashboard.source import Seen

STALE_STATUS_S = 60.0  # the server rewrites status.json every tick (1 s)
SKEW_WARN_S = 60.0  # a node clock this far off makes its own timestamps misleading
BAD_RELEASE_STATES = ("rejected", "rollback", "model_rejected")
_NAMES_SHOWN = 5


@dataclass(frozen=True)
class Alert:
    """One line in the page's alerts box (and ``/api/v1/alerts``)."""

    level: Literal["error", "warning"]
    what: str

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _names(nodes: Sequence[str]) -> str:
    shown = ", ".join(nodes[:_NAMES_SHOWN])
    more = len(nodes) - _NAMES_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def _server_alerts(status: Mapping[str, Any] | None, now: float) -> list[Alert]:
    if status is None:
        return [Alert("warning", "no status.json: the server has not started in this state_dir")]
    out = []
    for item in status.get("alerts") or ():  # the server's own, should it report any
        if isinstance(item, Mapping):
            what = str(item.get("what") or item.get("message") or item)
            out.append(Alert("error" if item.get("level") == "error" else "warning", what))
        else:
            out.append(Alert("warning", str(item)))
    ts = status.get("ts")
    if isinstance(ts, int | float) and now - ts > STALE_STATUS_S:
        out.append(
            Alert(
                "warning",
                f"the server's status.json is {now - ts:.0f} s old: is `edgeai server run` "
                "running?",
            )
        )
    return out


def _run_alerts(runs: Sequence[Mapping[str, Any]]) -> list[Alert]:
    return [
        Alert("error", f"run {run['id']} {run['state']}: {run.get('reason') or 'no reason given'}")
        for run in runs
        if run.get("state") in ("failed", "stopped")
    ]


def _release_alerts(releases: Mapping[str, Any]) -> list[Alert]:
    out = []
    if releases.get("error"):
        out.append(Alert("error", str(releases["error"])))
    latest: dict[str, tuple[int, Mapping[str, Any]]] = {}
    for release in releases.get("releases") or ():
        for profile, rollout in (release.get("rollouts") or {}).items():
            latest[profile] = (release["release"], rollout)
    for profile, (number, rollout) in sorted(latest.items()):
        if rollout.get("state") in ("revoked", "failed"):
            out.append(
                Alert(
                    "error",
                    f"release {number} {rollout['state']} for {profile}: "
                    f"{rollout.get('detail') or 'no detail'}",
                )
            )
    return out


def _node_alerts(
    nodes: Sequence[NodeState], seen: Mapping[str, Seen], now: float, offline_after_s: float
) -> list[Alert]:
    out = []
    offline = [n.node for n in nodes if not n.online]
    if offline:
        out.append(Alert("warning", f"{len(offline)} node(s) offline: {_names(offline)}"))
    # Judged by the server's clock: nothing *received* for that long, whatever the node's
    # own timestamps say (its retained "online" status stands until the broker's will).
    silent = [
        n.node
        for n in nodes
        if n.online and n.node in seen and now - seen[n.node].received > offline_after_s
    ]
    if silent:
        out.append(
            Alert(
                "warning",
                f"{len(silent)} node(s) online but silent for over {offline_after_s:.0f} s: "
                f"{_names(silent)}",
            )
        )
    bad = [f"{n.node} ({n.release_state})" for n in nodes if n.release_state in BAD_RELEASE_STATES]
    if bad:
        out.append(Alert("warning", f"{len(bad)} node(s) refused a release: {_names(bad)}"))
    skewed = [
        f"{name} ({s.skew_s:+.0f} s)"
        for name, s in sorted(seen.items())
        if abs(s.skew_s) > SKEW_WARN_S
    ]
    if skewed:
        out.append(
            Alert(
                "warning",
                f"{len(skewed)} node clock(s) off by over {SKEW_WARN_S:.0f} s (last seen uses "
                f"the server's receive time): {_names(skewed)}",
            )
        )
    return out


def alerts(
    *,
    status: Mapping[str, Any] | None,
    runs: Sequence[Mapping[str, Any]],
    releases: Mapping[str, Any],
    nodes: Sequence[NodeState],
    seen: Mapping[str, Seen],
    now: float,
    offline_after_s: float,
) -> list[Alert]:
    """Every alert, errors first."""
    found = [
        *_server_alerts(status, now),
        *_run_alerts(runs),
        *_release_alerts(releases),
        *_node_alerts(nodes, seen, now, offline_after_s),
    ]
    return sorted(found, key=lambda a: a.level != "error")
