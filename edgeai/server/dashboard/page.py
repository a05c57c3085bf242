"""The page ``/``: node rows filtered and paged on the server, rendered with Jinja2.

A fleet of thousands of nodes never reaches the browser whole: the query string picks a
page of rows (``?q=rpi&online=no&page=3``), so the page stays small and quick at any size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from edgeai.errors import EdgeAIError
from edgeai.server.collector import NodeState
from edgeai.server.dashboard.alerts import Alert
from edgeai.server.dashboard.source import Seen

MAX_QUERY = 100  # characters of a filter
MAX_PAGE = 100_000
ONLINE = ("", "yes", "no")
ROUNDS_SHOWN = 10


class QueryError(EdgeAIError, ValueError):
    """A query parameter of the page that cannot be honoured (answered with 400)."""


@dataclass(frozen=True)
class NodeQuery:
    """Which node rows the page shows: a text filter, online or not, a profile, a page."""

    q: str = ""
    online: str = ""
    profile: str = ""
    page: int = 1

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> NodeQuery:
        """Read ``q``, ``online``, ``profile`` and ``page``; others are ignored.

        Raises
        ------
        QueryError
            A value too long, not one of the choices, or a page that is not a number.
        """
        q, online, profile = (params.get(k, "").strip() for k in ("q", "online", "profile"))
        for name, value in (("q", q), ("profile", profile)):
            if len(value) > MAX_QUERY:
                raise QueryError(f"{name}: at most {MAX_QUERY} characters")
        if online not in ONLINE:
            raise QueryError("online: yes, no or empty")
        raw = params.get("page", "1").strip() or "1"
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6 and 1 <= int(raw) <= MAX_PAGE):
            raise QueryError(f"page: a number from 1 to {MAX_PAGE}")
        return cls(q, online, profile, int(raw))

    def matches(self, n: NodeState) -> bool:
        """Whether ``n`` passes the filters."""
        if self.online and n.online != (self.online == "yes"):
            return False
        if self.profile and n.profile != self.profile:
            return False
        if not self.q:
            return True
        needle = self.q.lower()
        fields = (n.node, n.profile, n.model_version, n.release_state, str(n.release))
        return any(needle in f.lower() for f in fields if f)


@dataclass(frozen=True)
class NodePage:
    """One page of node rows, and what the pager needs."""

    rows: list[dict[str, Any]]
    matched: int
    page: int
    pages: int


def ago(seconds: float | None) -> str:
    """``"5 s ago"``, ``"3 min ago"``, ``"2 h ago"``, ``"4 d ago"``; ``"never"`` for None."""
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    for limit, unit, div in ((60, "s", 1), (3600, "min", 60), (86_400, "h", 3600)):
        if s < limit:
            return f"{s / div:.0f} {unit} ago"
    return f"{s / 86_400:.0f} d ago"


def node_page(
    nodes: Sequence[NodeState],
    seen: Mapping[str, Seen],
    query: NodeQuery,
    now: float,
    page_size: int,
) -> NodePage:
    """Filter, page and decorate node rows (last seen by the server's receive time)."""
    matched = [n for n in nodes if query.matches(n)]
    pages = max(1, math.ceil(len(matched) / page_size))
    page = min(query.page, pages)
    rows = []
    for n in matched[(page - 1) * page_size : page * page_size]:
        s = seen.get(n.node)
        # The receive time is the server's clock; the node's own stamp only as a fallback.
        last = s.received if s is not None else n.last_seen
        rows.append(
            {
                **n.as_json(),
                "last_seen_ago": ago(None if last is None else now - last),
                "skew_s": None if s is None else s.skew_s,
            }
        )
    return NodePage(rows, len(matched), page, pages)


def chart_data(run_id: str, rounds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Columns for the run's accuracy and ε plots (uPlot takes one array per series)."""
    return {
        "id": run_id,
        "round": [r.get("round") for r in rounds],
        "accuracy": [r.get("accuracy") for r in rounds],
        "epsilon": [r.get("epsilon") for r in rounds],
        "client_epsilon": [r.get("client_epsilon") for r in rounds],
    }


class PageRenderer:
    """The Jinja2 environment over the package's ``templates/`` (autoescaped)."""

    def __init__(self) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("edgeai.server.dashboard", "templates"),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._template = self._env.get_template("index.html")

    def render(
        self,
        *,
        fleet: str,
        nodes: Sequence[NodeState],
        page: NodePage,
        query: NodeQuery,
        runs: Sequence[Mapping[str, Any]],
        rounds: Mapping[str, Sequence[Mapping[str, Any]]],
        releases: Mapping[str, Any],
        alerts: Sequence[Alert],
        refresh_s: float,
        now: float,
    ) -> str:
        """The whole page."""
        profiles = sorted({n.profile for n in nodes if n.profile})
        return self._template.render(
            fleet=fleet,
            total=len(nodes),
            online=sum(n.online for n in nodes),
            profiles=profiles,
            page=page,
            query=query,
            runs=runs,
            rounds={k: list(v)[-ROUNDS_SHOWN:][::-1] for k, v in rounds.items()},
            charts=[chart_data(run_id, rs) for run_id, rs in rounds.items()],
            releases=list(releases.get("releases") or ())[::-1],
            serving=releases.get("serving") or {},
            alerts=alerts,
            refresh_s=refresh_s,
            now=now,
            ago=ago,
        )
