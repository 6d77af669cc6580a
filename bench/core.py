"""The core platform's own cost, on the embedded bus and local Ray.

- no-op: p50 and p99 of publish -> handler -> result for a service whose
  handler does nothing (a relay), one request at a time;
- 100 ms handler: the time of a handler that works for 100 ms, run through
  the platform, against calling the same handler directly (ratio).
"""

from __future__ import annotations

import os
import socket
import tempfile
import textwrap
import time
from typing import Any

from bench.report import save, summary_ms, table

N_NOOP = 300
N_WORK = 20
WORK_SECONDS = 0.1

WORKFLOW = """\
    apiVersion: wakefield/v1
    kind: Workflow
    metadata: {{name: bench-core}}
    spec:
      datastore: {{root: {root}/data}}
      bus: {{backend: embedded, path: {root}/bus}}
      topics: [{{name: bench.requests, partitions: 1, external: true}}]
      services:
        - name: relay
          uses: relay
          config: {{work: {work}}}
          subscribe: {{in: bench.requests}}
          publish: {{out: bench.results}}
"""


def round_trips(work: float, n: int, bus_url: str | None = None) -> list[float]:
    """Seconds from publish to the result's arrival, one request at a time."""
    from wakefield import api
    from wakefield.loader import loads_workflow

    root = tempfile.mkdtemp(prefix="wf-bench-")
    wf = loads_workflow(textwrap.dedent(WORKFLOW.format(root=root, work=work)))
    run = api.start(wf, bus_url=bus_url)
    bus = api.connect(wf, run.bus_url)
    producer = bus.producer()
    results = bus.consumer(["bench.results"], group=None, start="latest")
    try:
        _send(
            producer, results, run.run_id, "warm-up", timeout=120
        )  # actor up and polling
        seconds = []
        for i in range(n):
            started = time.perf_counter()
            _send(producer, results, run.run_id, str(i), timeout=60)
            seconds.append(time.perf_counter() - started)
        return seconds
    finally:
        results.close()
        run.cancel("benchmark done")
        run.wait()
        bus.close()


def _send(producer: Any, results: Any, run_id: str, tag: str, timeout: float) -> None:
    from wakefield.events import Event

    event = Event(source="bench", type="bench.request", data={"tag": tag}, runid=run_id)
    producer.publish("bench.requests", event, key=run_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in results.poll(timeout=0.5, max_records=10):
            if record.event is not None and record.event.causationid == event.id:
                return
    raise TimeoutError(f"no result for request {tag} within {timeout} s")


def direct_calls(work: float, n: int) -> list[float]:
    """The same relay handler called in this process, no bus, no actor."""
    from wakefield.datastore import Datastore
    from wakefield.events import Event
    from wakefield.service import HandlerContext, ServiceContext
    from wakefield.services.relay import Relay, RelayConfig

    context = ServiceContext(
        "bench",
        "relay",
        "direct",
        0,
        Datastore(tempfile.mkdtemp()),
        "wakefield://bench/relay",
    )
    relay = Relay(RelayConfig(work=work), context)
    seconds = []
    for i in range(n):
        event = Event(source="bench", type="bench.request", data={"tag": i})
        ctx = HandlerContext(context, event, outputs={"out": "bench.results"})
        started = time.perf_counter()
        relay.handle(event, "in", ctx)
        seconds.append(time.perf_counter() - started)
    return seconds


def kafka_url() -> str | None:
    """The test broker (``WAKEFIELD_TEST_KAFKA``) if one answers, else None."""
    address = os.environ.get("WAKEFIELD_TEST_KAFKA", "127.0.0.1:9092")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=2):
            return f"kafka://{address}"
    except OSError:
        return None


def _latency_row(bus: str, figures: dict[str, float]) -> dict[str, object]:
    return {
        "bus": bus,
        "requests": figures["n"],
        "p50 ms": figures["p50_ms"],
        "p99 ms": figures["p99_ms"],
        "mean ms": figures["mean_ms"],
    }


def run() -> str:
    noop = summary_ms(round_trips(0.0, N_NOOP))
    kafka = kafka_url()
    noop_kafka = summary_ms(round_trips(0.0, N_NOOP, bus_url=kafka)) if kafka else None
    platform = summary_ms(round_trips(WORK_SECONDS, N_WORK))
    direct = summary_ms(direct_calls(WORK_SECONDS, N_WORK))
    ratio = platform["mean_ms"] / direct["mean_ms"]
    save(
        "core",
        {
            "noop": noop,
            "noop_kafka": noop_kafka,
            "work_platform": platform,
            "work_direct": direct,
            "ratio": ratio,
        },
    )

    rows = [_latency_row("embedded", noop)]
    rows.append(
        _latency_row(kafka, noop_kafka)
        if kafka and noop_kafka
        else {"bus": "kafka: no broker answered, not measured"}
    )
    work_rows = [
        {
            "path": "platform (publish -> actor -> result)",
            "n": platform["n"],
            "mean ms": platform["mean_ms"],
            "p99 ms": platform["p99_ms"],
        },
        {
            "path": "direct call",
            "n": direct["n"],
            "mean ms": direct["mean_ms"],
            "p99 ms": direct["p99_ms"],
        },
    ]
    return (
        table(
            "no-op service, publish -> handler -> result (one request at a time)",
            rows,
            ["bus", "requests", "p50 ms", "p99 ms", "mean ms"],
        )
        + table(
            f"{WORK_SECONDS * 1e3:.0f} ms handler: through the platform against a "
            "direct call",
            work_rows,
        )
        + f"  ratio platform / direct: {ratio:.3f}x\n"
    )


if __name__ == "__main__":
    print(run())
