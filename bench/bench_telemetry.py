"""Durable telemetry (SQLite outbox -> MQTT 5 QoS 1) vs raw paho QoS 1, same broker, same messages.

    python -m bench.bench_telemetry [--messages 5000] [--repeats 3] [--inflight 20]

Both sides publish N small JSON envelopes (the same ``Envelope`` encoding) to one Mosquitto
on 127.0.0.1 and are timed from the first publish call to the last PUBACK:

- **raw paho**: ``Client.publish(qos=1)`` in a loop (paho queues in RAM), then wait for the
  N-th ``on_publish``.
- **outbox**: ``Telemetry.event`` in a loop (one SQLite transaction per message, durable when
  it returns), the pump hands rows to paho in batches and deletes acknowledged rows in one
  transaction per batch; done when the outbox is empty.

Both use the same ``max_inflight_messages``.  Rounds alternate between the two sides; the
medians and their ratio are printed.  Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from edgeai.telemetry import Envelope, NodeTopics, Telemetry, TelemetryConfig
from tests.mosquitto import Mosquitto


def raw_paho(broker: Mosquitto, n: int, inflight: int) -> float:
    done = threading.Event()
    acked = 0

    def on_publish(*_: Any) -> None:
        nonlocal acked
        acked += 1
        if acked == n:
            done.set()

    connected = threading.Event()
    client = paho.Client(
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


def outbox(broker: Mosquitto, n: int, inflight: int, tmp: Path) -> float:
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
        deadline = time.monotonic() + 10
        while not t.stats()["connected"]:
            if time.monotonic() > deadline:
                raise RuntimeError("telemetry did not connect")
            time.sleep(0.005)
        t0 = time.perf_counter()
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
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d, Mosquitto(Path(d) / "broker") as broker:
        times: dict[str, list[float]] = {"raw paho QoS 1": [], "outbox -> QoS 1": []}
        raw_paho(broker, 200, args.inflight)  # warm-up: imports, broker, sockets
        outbox(broker, 200, args.inflight, Path(d))
        for _ in range(args.repeats):
            times["raw paho QoS 1"].append(raw_paho(broker, args.messages, args.inflight))
            times["outbox -> QoS 1"].append(outbox(broker, args.messages, args.inflight, Path(d)))
    n = args.messages
    print(
        f"{n} messages, max_inflight {args.inflight}, median of {args.repeats} alternating rounds"
    )
    rates = {}
    for name, ts in times.items():
        rates[name] = n / statistics.median(ts)
        shown = ", ".join(f"{n / x:,.0f}" for x in ts)
        print(f"  {name:16s} {rates[name]:9,.0f} msg/s  (rounds: {shown})")
    ratio = rates["outbox -> QoS 1"] / rates["raw paho QoS 1"]
    print(f"outbox / raw paho: {ratio:.2f}x (target >= 0.8x) {'OK' if ratio >= 0.8 else 'MISSED'}")


if __name__ == "__main__":
    main()
