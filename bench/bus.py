"""Publish -> consume throughput and end-to-end latency of a bus backend.

:func:`bus_throughput` measures one backend; :func:`run` puts the embedded
bus and a Kafka broker (``WAKEFIELD_TEST_KAFKA``, ``127.0.0.1:9092`` unless
set) side by side, with small and large events, sent one at a time and in
batches.  Latency is from the moment ``publish`` is called to the moment a
consumer on another thread has the event; throughput is events over the
time from the first publish to the last event consumed.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
import uuid
from typing import Any

from bench.report import percentile, save, table
from wakefield.bus.base import Bus, Consumer, TopicSpec
from wakefield.errors import BusError
from wakefield.events import Event

SOURCE = "wakefield://bench/bus"
TIMEOUT = 300.0  # s, the longest a measurement waits for its events

# (events, payload bytes, batch): small events one at a time and batched,
# then large ones (still well under the 1 MiB limit).
CASES = [(1000, 1024, 1), (5000, 1024, 100), (300, 100 * 1024, 10)]


def bus_throughput(
    bus: Bus,
    n_events: int,
    payload_bytes: int,
    *,
    batch: int = 1,
    partitions: int = 1,
) -> dict[str, Any]:
    """Publish ``n_events`` events of ``payload_bytes`` bytes of data to a new
    topic while a reader consumes them; returns events/s and latency (ms).

    ``batch`` events go in one ``publish_many`` call (1: ``publish``).
    """
    topic = f"bench-bus-{uuid.uuid4().hex[:10]}"
    bus.ensure_topics([TopicSpec(topic, partitions=partitions)])
    reader = bus.consumer([topic], group=None, start="earliest")
    producer = bus.producer()
    pad = "x" * payload_bytes

    # The reader records when each event arrived; the event says when it
    # was published.
    latencies: list[float] = []
    done = threading.Event()
    failures: list[BaseException] = []
    collector = threading.Thread(
        target=_collect,
        args=(reader, n_events, latencies, done, failures),
        name="bench-reader",
        daemon=True,
    )
    collector.start()

    started = time.time()
    for first in range(0, n_events, batch):
        count = min(batch, n_events - first)
        now = time.time()
        events = [
            Event(
                source=SOURCE, type="org.wakefield.bench", data={"t": now, "pad": pad}
            )
            for _ in range(count)
        ]
        if count == 1:
            producer.publish(topic, events[0], key=str(first % 16))
        else:
            producer.publish_many([(topic, e, str(first % 16)) for e in events])

    finished = done.wait(TIMEOUT)
    elapsed = time.time() - started
    producer.close()
    reader.close()
    if failures:
        raise BusError(f"the bench reader failed: {failures[0]}") from failures[0]
    if not finished:
        raise BusError(
            f"only {len(latencies)} of {n_events} events arrived within {TIMEOUT:g} s"
        )

    ms = [s * 1e3 for s in latencies]
    return {
        "backend": type(bus).__name__,
        "events": n_events,
        "payload_bytes": payload_bytes,
        "batch": batch,
        "seconds": elapsed,
        "events_per_s": n_events / elapsed,
        "mib_per_s": n_events * payload_bytes / elapsed / 2**20,
        "p50_ms": percentile(ms, 50),
        "p99_ms": percentile(ms, 99),
    }


def _collect(
    reader: Consumer,
    n_events: int,
    latencies: list[float],
    done: threading.Event,
    failures: list[BaseException],
) -> None:
    deadline = time.monotonic() + TIMEOUT
    try:
        while len(latencies) < n_events and time.monotonic() < deadline:
            for record in reader.poll(timeout=0.5, max_records=500):
                arrived = time.time()
                if record.event is not None:
                    latencies.append(arrived - record.event.data["t"])
    except BaseException as exc:  # noqa: BLE001 - reported by the caller
        failures.append(exc)
    if len(latencies) >= n_events:
        done.set()


def _backends() -> list[tuple[str, Bus | str]]:
    """Each backend, or the reason it cannot be measured here."""
    found: list[tuple[str, Bus | str]] = []
    from wakefield.bus.embedded import EmbeddedBus

    found.append(("embedded", EmbeddedBus(tempfile.mkdtemp(prefix="wf-bench-bus-"))))

    from wakefield.bus.kafka import KafkaBus, KafkaOptions

    address = os.environ.get("WAKEFIELD_TEST_KAFKA", "127.0.0.1:9092")
    try:
        kafka = KafkaBus([address], options=KafkaOptions(connect_timeout=10.0))
        found.append(("kafka", kafka))
    except BusError as exc:
        found.append(("kafka", f"no broker at {address}: {exc}"))
    return found


def run() -> str:
    """Both backends side by side, as a table (also saved as JSON)."""
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for name, bus in _backends():
        if isinstance(bus, str):
            notes.append(f"  {name}: not measured ({bus})")
            continue
        try:
            for n_events, payload, batch in CASES:
                row = bus_throughput(bus, n_events, payload, batch=batch)
                rows.append({"bus": name, **row})
        finally:
            bus.close()

    save("bus", {"rows": rows, "notes": notes})
    columns = [
        "bus",
        "events",
        "payload_bytes",
        "batch",
        "events_per_s",
        "mib_per_s",
        "p50_ms",
        "p99_ms",
    ]
    text = table("publish -> consume, one reader on another thread", rows, columns)
    return text + "\n".join(notes)
