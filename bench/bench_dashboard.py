"""Dashboard latency with 1,000 nodes: `/api/v1/fleet` and `/` vs sqlite3 reading the rows.

The fleet database is written by the real collector (tests/dashboard_state.py). The
dashboard runs as `edgeai dashboard` in its own process (as an operator runs it); one
keep-alive HTTP client asks for each URL in turn, interleaved with the reference: the
same rows read with sqlite3 directly (``SELECT node, record FROM nodes``, and the same
with each record's JSON decoded). Prints p50/p95 and the ratio of the p95s.

    python -m bench.bench_dashboard [--nodes 1000] [--repeats 200]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tests.dashboard_state import populate


def start_dashboard(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    argv = [sys.executable, "-m", "edgeai.cli", "dashboard", "-c", str(config), "--port", "0"]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text(errors="replace"))
        if found:
            return proc, int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"edgeai dashboard did not start:\n{log.read_text(errors='replace')}")


def http_get(conn: http.client.HTTPConnection, path: str) -> Callable[[], int]:
    def get() -> int:
        conn.request("GET", path)
        reply = conn.getresponse()
        body = reply.read()
        if reply.status != 200:
            raise SystemExit(f"GET {path}: {reply.status} {body[:200]!r}")
        return len(body)

    return get


def sqlite_rows(db: Path, decode: bool) -> Callable[[], int]:
    uri = f"{db.resolve().as_uri()}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, check_same_thread=False)

    def read() -> int:
        rows = conn.execute("SELECT node, record FROM nodes ORDER BY node").fetchall()
        if decode:
            rows = [(node, json.loads(record)) for node, record in rows]
        return len(rows)

    return read


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    t0 = time.perf_counter()
    state = populate(root, nodes=args.nodes, rounds=30)
    print(
        f"{args.nodes} nodes through the real collector in {time.perf_counter() - t0:.1f} s "
        f"({state.db.stat().st_size / 1024:.0f} KiB database)"
    )
    proc, port = start_dashboard(state.config, root / "dashboard.log")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    cases: dict[str, Callable[[], int]] = {
        "GET /api/v1/fleet": http_get(conn, "/api/v1/fleet"),
        "GET / (page 1 of 20)": http_get(conn, "/"),
        "GET /?q=rpi5&page=3": http_get(conn, "/?q=rpi5&page=3"),
        "sqlite3: SELECT rows": sqlite_rows(state.db, decode=False),
        "sqlite3: SELECT + json.loads": sqlite_rows(state.db, decode=True),
    }
    gc.freeze()  # as `edgeai dashboard` does: the reference's GC pauses skip the imports too
    try:
        sizes = {name: fn() for name, fn in cases.items()}  # warm-up (and the incremental read)
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.repeats):  # interleaved: noise on a shared machine hits all alike
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - start) * 1000)
    finally:
        conn.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)

    print(f"\n{args.repeats} requests each, interleaved; milliseconds\n")
    print(f"{'':32} {'p50':>8} {'p95':>8}  size")
    for name, values in times.items():
        unit = "rows" if name.startswith("sqlite3") else "bytes"
        print(f"{name:32} {pct(values, 50):8.2f} {pct(values, 95):8.2f}  {sizes[name]} {unit}")
    ref = pct(times["sqlite3: SELECT rows"], 95)
    ref_decoded = pct(times["sqlite3: SELECT + json.loads"], 95)
    print("\nratio of p95s (ours / sqlite3 SELECT, ours / SELECT + json.loads):")
    for name in list(cases)[:3]:
        ours = pct(times[name], 95)
        print(f"  {name:30} {ours / ref:6.1f}x  {ours / ref_decoded:6.1f}x")


if __name__ == "__main__":
    main()
