"""A telemetry-emitting process that tests can SIGKILL.

    python -m tests.integration.telemetry_agent --broker-url mqtt://127.0.0.1:P --node n1 \
        --outbox /tmp/o.db --count 100 [--start 0] [--interval 0.01] [--progress FILE] [--linger]

Publishes status "online", then events ``tick`` with ``i`` = start .. start+count-1, and
appends each ``i`` to ``--progress`` right after ``enqueue`` returned (so whatever is in that
file must be delivered eventually).  With ``--linger`` it then waits for SIGTERM/SIGINT;
either way it ends with ``Telemetry.stop`` and exits 0 if the outbox was flushed, else 3.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from edgeai.telemetry import Telemetry, TelemetryConfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", required=True)
    parser.add_argument("--fleet", default="test")
    parser.add_argument("--node", required=True)
    parser.add_argument("--outbox", type=Path, required=True)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--interval", type=float, default=0.0)
    parser.add_argument("--progress", type=Path)
    parser.add_argument("--linger", action="store_true")
    parser.add_argument("--flush-timeout", type=float, default=30.0)
    args = parser.parse_args(argv)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    config = TelemetryConfig(
        broker_url=args.broker_url,
        fleet=args.fleet,
        outbox_path=args.outbox,
        metrics_interval_s=0,
        keepalive_s=5,
        reconnect_min_s=1,
        reconnect_max_s=1,
    )
    telemetry = Telemetry(config, args.node)
    telemetry.start()
    telemetry.status("online")
    progress = args.progress.open("a", encoding="utf-8") if args.progress else None
    for i in range(args.start, args.start + args.count):
        telemetry.event("tick", i=i)
        if progress:
            progress.write(f"{i}\n")
            progress.flush()  # in the kernel's page cache now: survives our SIGKILL
        if args.interval:
            time.sleep(args.interval)
        if done.is_set():
            break
    if progress:
        progress.close()
    if args.linger:
        print("lingering", flush=True)
        done.wait()
    return 0 if telemetry.stop(flush_timeout_s=args.flush_timeout) else 3


if __name__ == "__main__":
    sys.exit(main())
