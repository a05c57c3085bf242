"""Durable telemetry (SQLite outbox -> MQTT 5 QoS 1) vs raw paho QoS 1, same broker, same messages.

    python -m bench.bench_telemetry [--messages 5000] [--repeats 3] [--inflight 20] [--burst 100]

Every side publishes N small JSON envelopes (the same ``Envelope`` encoding, the same body)
to one Mosquitto on 127.0.0.1 and is timed from the first publish call to the last PUBACK
(woken by an event, not polled):

- **raw paho**: stock ``paho.Client.publish(qos=1)`` in a loop (paho queues in RAM), then
  wait for the N-th ``on_publish``.  The reference of the 0.8x target.
- **raw paho, edgeai client**: the same with the paho subclass :class:`PahoTransport` uses
  (no wake-up byte from paho's network thread to itself), to show how much of the outbox's
  rate comes from that rather than from the outbox.
- **outbox**: ``Telemetry.event`` in a loop (one SQLite commit per message, durable when it
  returns); the pump hands rows to paho and deletes acknowledged rows in batches; done when
  ``Telemetry.flush`` sees the outbox empty.
- **outbox, events()**: the same messages through ``Telemetry.events`` in bursts of
  ``--burst`` (one commit per burst).

All use the same ``max_inflight_messages``.  Rounds alternate between the sides after one
warm-up round each; medians and ratios are printed.  Not a test: nothing asserts a time.

The broker runs with ``set_tcp_nodelay true``: with Mosquitto's default (Nagle on) the last
PUBACKs of a burst often wait ~40 ms for the client's delayed TCP ACK, a constant added to
every side that measures the broker's socket options, not the clients (``--broker-nagle``
brings it back).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeai.plumbing.processes import wait_until
from edgeai.telemetry import Envelope, NodeTopics, Telemetry, TelemetryConfig
from edgeai.telemetry.mqtt import _Client as EdgeaiClient
from tests.mosquitto import Mosquitto


def raw_paho(
    broker: Mosquitto, n: int, inflight: int, client_class: type[paho.Client] = paho.Client
) -> float:
    done = threading.Event()
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    connected = threading.Event()
    client = client_class(
        CallbackAPIVersion.VERSION2, client_id=f"raw-{uuid.uuid4().hex[:6]}", protocol=paho.MQTTv5
    )
    client.max_inflight_messages_set(inflight)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.on_connect = lambda *_: connected.set()
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("raw paho client did not connect")
        topic = NodeTopics("bench", "raw").event("bench")
        boot = uuid.uuid4().hex
        t0 = time.perf_counter()
        for i in range(n):
            payload = Envelope("raw", boot, i + 1, time.time(), {"i": i, "v": 0.5}).encode()
            client.publish(topic, payload, qos=1)
        if not done.wait(120):
            raise RuntimeError(f"raw paho: only {acked} of {n} PUBACKs")
        return time.perf_counter() - t0
    finally:
        client.disconnect()
        client.loop_stop()


def outbox(broker: Mosquitto, n: int, inflight: int, tmp: Path, burst: int = 0) -> float:
    config = TelemetryConfig(
        broker_url=broker.url,
        fleet="bench",
        outbox_path=tmp / f"{uuid.uuid4().hex}.db",
        metrics_interval_s=0,
        max_inflight=inflight,
    )
    t = Telemetry(config, "outbox")
    t.start()
    try:
        wait_until(lambda: t.stats()["connected"], 10, "telemetry to connect", poll_s=0.005)
        t0 = time.perf_counter()
        if burst:
            for start in range(0, n, burst):
                t.events("bench", ({"i": i, "v": 0.5} for i in range(start, min(n, start + burst))))
        else:
            for i in range(n):
                t.event("bench", i=i, v=0.5)
        # Like raw paho's Event: woken when the last acknowledged rows are deleted.
        if not t.flush(120):
            raise RuntimeError(f"outbox: {t.stats()['queued']} of {n} still queued")
        return time.perf_counter() - t0
    finally:
        t.stop(flush_timeout_s=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--inflight", type=int, default=20)
    parser.add_argument("--burst", type=int, default=100, help="events() burst size")
    parser.add_argument(
        "--broker-nagle",
        action="store_true",
        help="leave Mosquitto's set_tcp_nodelay off (its default): a PUBACK can then wait "
        "~40 ms for a delayed TCP ACK at the end of a burst, on every side alike",
    )
    args = parser.parse_args()
    n, inflight, burst = args.messages, args.inflight, args.burst
    extra = () if args.broker_nagle else ("set_tcp_nodelay true",)
    with tempfile.TemporaryDirectory() as d, Mosquitto(Path(d) / "broker", extra=extra) as broker:
        tmp = Path(d)
        sides: dict[str, Callable[[int], float]] = {
            "raw paho QoS 1": lambda k: raw_paho(broker, k, inflight),
            "raw paho, edgeai client": lambda k: raw_paho(broker, k, inflight, EdgeaiClient),
            "outbox -> QoS 1": lambda k: outbox(broker, k, inflight, tmp),
            f"outbox, events() x{burst}": lambda k: outbox(broker, k, inflight, tmp, burst),
        }
        for side in sides.values():
            side(200)  # warm-up: imports, broker, sockets, SQLite
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, side in sides.items():
                times[name].append(side(n))
    nagle = "Nagle on (stock)" if args.broker_nagle else "set_tcp_nodelay true"
    print(
        f"{n} messages, max_inflight {inflight}, median of {args.repeats} alternating rounds, "
        f"broker {nagle}"
    )
    rates = {}
    for name, ts in times.items():
        rates[name] = n / statistics.median(ts)
        shown = ", ".join(f"{n / x:,.0f}" for x in ts)
        print(f"  {name:24s} {rates[name]:9,.0f} msg/s  (rounds: {shown})")
    raw, tuned = rates["raw paho QoS 1"], rates["raw paho, edgeai client"]
    ratio = rates["outbox -> QoS 1"] / raw
    print(f"outbox / raw paho: {ratio:.2f}x (target >= 0.8x) {'OK' if ratio >= 0.8 else 'MISSED'}")
    print(f"outbox / raw paho with edgeai client: {rates['outbox -> QoS 1'] / tuned:.2f}x")
    print(f"outbox events() x{burst} / raw paho: {rates[f'outbox, events() x{burst}'] / raw:.2f}x")


if __name__ == "__main__":
    main()
